//! Who is asking: [`ClientId`] and the [`ClientKey`] extractors that find it in a request.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

/// Bytes kept inline: enough for an IPv6 address, a UUID in hex, or a short API key id, so the
/// common keys cost no allocation on the request path.
const INLINE: usize = 32;

/// The identity of one client: a short byte string compared and hashed by its bytes.
///
/// Keys up to 32 bytes are stored inline. Numbers become their decimal text (so client `7` and
/// header value `"7"` are the same client), IP addresses their octets. The empty key is the
/// shared [anonymous](ClientId::anonymous) client.
#[derive(Clone)]
pub struct ClientId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

impl ClientId {
    /// A key made of these bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            ClientId(Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            })
        } else {
            ClientId(Repr::Shared(Arc::from(bytes)))
        }
    }

    /// The key all requests without an identity share (when [`MissingKey::Shared`]): the
    /// empty byte string.
    pub fn anonymous() -> Self {
        ClientId::from_bytes(&[])
    }

    /// The key's bytes: what is hashed for whole-client selection.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Shared(bytes) => bytes,
        }
    }

    /// True for the [anonymous](ClientId::anonymous) key.
    pub fn is_anonymous(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl PartialEq for ClientId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ClientId {}

impl Hash for ClientId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientId({:?})",
            String::from_utf8_lossy(self.as_bytes())
        )
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId::from_bytes(s.as_bytes())
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        ClientId::from_bytes(s.as_bytes())
    }
}

impl From<&[u8]> for ClientId {
    fn from(bytes: &[u8]) -> Self {
        ClientId::from_bytes(bytes)
    }
}

impl From<u64> for ClientId {
    #[inline]
    fn from(n: u64) -> Self {
        // Decimal text, at most 20 digits, built in two 16-byte words and stored whole: the
        // caller reads the key back in wide loads, which byte-wise stores would stall.
        let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
        let (mut lo, mut hi) = (0u128, 0u128);
        let mut n = n;
        for k in (0..len).rev() {
            let digit = u128::from(b'0' + (n % 10) as u8);
            n /= 10;
            if k < 16 {
                lo |= digit << (8 * k);
            } else {
                hi |= digit << (8 * (k - 16));
            }
        }
        let mut bytes = [0u8; INLINE];
        bytes[..16].copy_from_slice(&lo.to_le_bytes());
        bytes[16..].copy_from_slice(&hi.to_le_bytes());
        ClientId(Repr::Inline {
            len: len as u8,
            bytes,
        })
    }
}

impl From<u32> for ClientId {
    fn from(n: u32) -> Self {
        ClientId::from(u64::from(n))
    }
}

impl From<IpAddr> for ClientId {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientId::from_bytes(&v4.octets()),
            IpAddr::V6(v6) => ClientId::from_bytes(&v6.octets()),
        }
    }
}

/// Finds the client a request comes from.
///
/// Any `Fn(&Req) -> Option<ClientId>` is an extractor, so a key can come from anything the
/// request carries:
///
/// ```
/// use backstop::throttle::{ClientId, ClientKey};
///
/// struct Call { tenant: u32 }
/// let by_tenant = |call: &Call| Some(ClientId::from(call.tenant));
/// assert_eq!(by_tenant.client_key(&Call { tenant: 7 }), Some(ClientId::from("7")));
/// ```
pub trait ClientKey<Req> {
    /// The request's client, or `None` when it carries no identity.
    fn client_key(&self, req: &Req) -> Option<ClientId>;
}

impl<F, Req> ClientKey<Req> for F
where
    F: Fn(&Req) -> Option<ClientId>,
{
    fn client_key(&self, req: &Req) -> Option<ClientId> {
        self(req)
    }
}

/// What to do with a request whose [`ClientKey`] finds no identity.
///
/// Every such request is counted in `backstop_throttle_keyless_requests_total`, whichever the
/// choice, so a stack whose clients are not identified shows it. With HTTP, prefer a key that
/// always finds someone: [`HeaderKey`](super::HeaderKey) falls back to the remote address when
/// the header is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// All such requests are one client, [`ClientId::anonymous`]: they share its quota and are
    /// shed together (the default, so that unidentified callers are still throttled; watch
    /// the keyless series, or choose another variant).
    #[default]
    Shared,
    /// Refuse them with [`MissingClientKey`](super::MissingClientKey) (which
    /// `overload_to_response` answers with 400 Bad Request).
    Refuse,
    /// Let them through untouched: neither shed nor held to a quota. Only for callers that
    /// are trusted or bounded by another layer: a client escapes the throttle by sending no key.
    Exempt,
}
#[cfg(feature = "http")]
pub use self::http_keys::{HeaderKey, Principal, PrincipalKey, RemoteAddrKey};

#[cfg(feature = "http")]
mod http_keys {
    use super::ClientId;
    use super::ClientKey;
    use crate::error::{ConfigError, check};
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    /// The client named by a request header, `x-client-id` by default; when the header is
    /// missing or empty, the remote address ([`RemoteAddrKey::new`]: a [`SocketAddr`] or an
    /// [`IpAddr`] in the request's extensions), so that callers who send no header are not one
    /// client sharing one quota. Only when neither is there does the layer's
    /// [`MissingKey`](super::MissingKey) apply.
    ///
    /// An address key is tagged (a leading 0 byte, which no header value can hold), so no header
    /// value can pose as an address. With axum, say where the address is:
    ///
    /// ```
    /// use axum::extract::ConnectInfo;
    /// use backstop::throttle::{HeaderKey, RemoteAddrKey};
    /// use std::net::SocketAddr;
    ///
    /// let key = HeaderKey::default()
    ///     .or_remote_addr(RemoteAddrKey::with(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())));
    /// # let _ = key;
    /// ```
    #[derive(Debug, Clone)]
    pub struct HeaderKey {
        name: http::HeaderName,
        fallback: Option<RemoteAddrKey>,
    }

    impl HeaderKey {
        /// The header read by [`HeaderKey::default`].
        pub const DEFAULT: &'static str = "x-client-id";

        /// Reads the client from header `name`, else from the remote address.
        pub fn new(name: http::HeaderName) -> Self {
            HeaderKey {
                name,
                fallback: Some(RemoteAddrKey::new()),
            }
        }

        /// Falls back to the address `key` finds when the header is missing.
        pub fn or_remote_addr(self, key: RemoteAddrKey) -> Self {
            HeaderKey {
                fallback: Some(key),
                ..self
            }
        }

        /// No fallback: a request without the header has no key (the layer's
        /// [`MissingKey`](super::MissingKey) decides).
        pub fn header_only(self) -> Self {
            HeaderKey {
                fallback: None,
                ..self
            }
        }
    }

    impl Default for HeaderKey {
        fn default() -> Self {
            HeaderKey::new(http::HeaderName::from_static(Self::DEFAULT))
        }
    }

    impl<B> ClientKey<http::Request<B>> for HeaderKey {
        fn client_key(&self, req: &http::Request<B>) -> Option<ClientId> {
            if let Some(value) = req.headers().get(&self.name)
                && !value.is_empty()
            {
                return Some(ClientId::from_bytes(value.as_bytes()));
            }
            let address = self.fallback.as_ref()?.client_key(req)?;
            // 0 then the address's octets: header values cannot contain a 0 byte.
            let octets = address.as_bytes();
            let mut tagged = [0u8; 17];
            tagged[1..=octets.len()].copy_from_slice(octets);
            Some(ClientId::from_bytes(&tagged[..=octets.len()]))
        }
    }

    /// An authenticated principal, put in the request's extensions by your authentication
    /// layer (which must run before the throttle).
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct Principal(pub ClientId);

    /// The client is the [`Principal`] in the request's extensions.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct PrincipalKey;

    impl<B> ClientKey<http::Request<B>> for PrincipalKey {
        fn client_key(&self, req: &http::Request<B>) -> Option<ClientId> {
            req.extensions().get::<Principal>().map(|p| p.0.clone())
        }
    }

    /// The client is the remote IP address (the port is ignored: one host, one client), with
    /// IPv6 addresses grouped by their first 64 bits.
    ///
    /// One IPv6 host usually holds a whole /64 and can pick a new address in it for every
    /// connection, so keying on the full address would let one client pass as millions and
    /// slip out of its quota. An IPv4 address seen through a dual-stack socket
    /// (`::ffff:a.b.c.d`) is keyed as the IPv4 address it is, not grouped: all of those share
    /// one /64. Change the grouping with [`ipv6_prefix`](Self::ipv6_prefix).
    ///
    /// By default it reads a [`SocketAddr`] or an [`IpAddr`] from the request's extensions,
    /// where a hyper server loop can put the peer address. With axum's connect info, say where
    /// to look:
    ///
    /// ```
    /// use axum::extract::ConnectInfo;
    /// use backstop::throttle::RemoteAddrKey;
    /// use std::net::SocketAddr;
    ///
    /// let key = RemoteAddrKey::with(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
    ///     .ipv6_prefix(56)?; // a site's /56, as some providers hand out
    /// # let _ = key;
    /// # Ok::<(), backstop::ConfigError>(())
    /// ```
    #[derive(Debug, Clone, Copy)]
    pub struct RemoteAddrKey {
        find: fn(&http::Extensions) -> Option<IpAddr>,
        v6_prefix: u8,
    }

    impl RemoteAddrKey {
        /// Reads a [`SocketAddr`], else an [`IpAddr`], from the extensions.
        pub fn new() -> Self {
            RemoteAddrKey::with(|ext| {
                ext.get::<SocketAddr>()
                    .map(SocketAddr::ip)
                    .or_else(|| ext.get::<IpAddr>().copied())
            })
        }

        /// Reads the address with `find` (for a connect-info type of your server framework).
        pub fn with(find: fn(&http::Extensions) -> Option<IpAddr>) -> Self {
            RemoteAddrKey {
                find,
                v6_prefix: 64,
            }
        }

        /// How many leading bits of an IPv6 address name the client, in [1, 128]; 128 keys
        /// each address on its own. Default 64.
        pub fn ipv6_prefix(self, bits: u8) -> Result<Self, ConfigError> {
            let bits = check(
                "ipv6_prefix",
                bits,
                |b| (1..=128).contains(b),
                "in [1, 128] bits",
            )?;
            Ok(RemoteAddrKey {
                v6_prefix: bits,
                ..self
            })
        }

        /// The client an address belongs to.
        pub fn client_of(&self, ip: IpAddr) -> ClientId {
            match ip {
                IpAddr::V4(v4) => ClientId::from(IpAddr::V4(v4)),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => ClientId::from(IpAddr::V4(v4)),
                    None => {
                        let mask = u128::MAX << (128 - u32::from(self.v6_prefix));
                        let network = Ipv6Addr::from(u128::from(v6) & mask);
                        ClientId::from(IpAddr::V6(network))
                    }
                },
            }
        }
    }

    impl Default for RemoteAddrKey {
        fn default() -> Self {
            RemoteAddrKey::new()
        }
    }

    impl<B> ClientKey<http::Request<B>> for RemoteAddrKey {
        fn client_key(&self, req: &http::Request<B>) -> Option<ClientId> {
            (self.find)(req.extensions()).map(|ip| self.client_of(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_their_decimal_text() {
        assert_eq!(ClientId::from(0u64).as_bytes(), b"0");
        assert_eq!(ClientId::from(7u32), ClientId::from("7"));
        assert_eq!(
            ClientId::from(u64::MAX).as_bytes(),
            u64::MAX.to_string().as_bytes()
        );
        for p in 0..20 {
            let ten = 10u64.pow(p);
            for n in [ten - 1, ten, ten + 1, ten.saturating_mul(9)] {
                assert_eq!(
                    ClientId::from(n).as_bytes(),
                    n.to_string().as_bytes(),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn long_keys_are_shared_and_compare_by_bytes() {
        let long = "k".repeat(100);
        let a = ClientId::from(long.as_str());
        assert_eq!(a, ClientId::from(long.clone()));
        assert_eq!(a.as_bytes().len(), 100);
        assert_ne!(a, ClientId::from("k"));
        assert!(ClientId::anonymous().is_anonymous());
    }
}
