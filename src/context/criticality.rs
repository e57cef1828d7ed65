//! How much a request matters when there is not room for all of them.

use std::fmt;
use std::str::FromStr;

/// How much a request matters to its caller, in four ordered levels (Google's): under overload
/// the layers that refuse turn away the lowest level first, so a checkout never loses to a
/// prefetch.
///
/// The order is `Sheddable < SheddablePlus < Critical < CriticalPlus`. The [`Default`] is
/// [`Critical`](Self::Critical), Google's default for a request nobody tagged; a layer that
/// reads criticality takes its own default for untagged requests ([`ByCriticality::new`]).
///
/// ```
/// use backstop::context::Criticality;
///
/// assert!(Criticality::Sheddable < Criticality::Critical);
/// assert_eq!("SHEDDABLE_PLUS".parse(), Ok(Criticality::SheddablePlus));
/// assert_eq!(Criticality::CriticalPlus.as_str(), "critical_plus");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Criticality {
    /// Work whose loss nobody notices at once (prefetches, batch jobs): refused first.
    Sheddable,
    /// Work a user would miss, but that can wait or be retried later.
    SheddablePlus,
    /// The default: work a user is waiting for.
    #[default]
    Critical,
    /// Work whose loss costs real harm (a payment, a login): refused last.
    CriticalPlus,
}

impl Criticality {
    /// The four levels, lowest first: the order in which they are refused.
    pub const ALL: [Criticality; 4] = [
        Criticality::Sheddable,
        Criticality::SheddablePlus,
        Criticality::Critical,
        Criticality::CriticalPlus,
    ];

    /// The position in [`ALL`](Self::ALL): 0 for `Sheddable`, 3 for `CriticalPlus`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short, stable, lowercase name, used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::SheddablePlus => "sheddable_plus",
            Criticality::Critical => "critical",
            Criticality::CriticalPlus => "critical_plus",
        }
    }

    /// The name on the wire: Google's upper-case spelling (`CRITICAL_PLUS`, ...).
    pub fn as_header_value(self) -> &'static str {
        match self {
            Criticality::Sheddable => "SHEDDABLE",
            Criticality::SheddablePlus => "SHEDDABLE_PLUS",
            Criticality::Critical => "CRITICAL",
            Criticality::CriticalPlus => "CRITICAL_PLUS",
        }
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A criticality name that is none of the four levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCriticality;

impl fmt::Display for UnknownCriticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a criticality (critical_plus, critical, sheddable_plus, sheddable)")
    }
}

impl std::error::Error for UnknownCriticality {}

impl FromStr for Criticality {
    type Err = UnknownCriticality;

    /// Either spelling, in any case, with `-` or `_`: `CRITICAL_PLUS`, `critical-plus`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Criticality::ALL
            .into_iter()
            .find(|c| {
                let name = c.as_str();
                name.len() == s.len()
                    && name
                        .bytes()
                        .zip(s.bytes())
                        .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'_' && b == b'-'))
            })
            .ok_or(UnknownCriticality)
    }
}

/// A request that carries a [`Criticality`], as [`HasDeadline`](crate::timeout::HasDeadline)
/// does a deadline.
///
/// Implemented for `http::Request<B>` and `http::Extensions` (feature `http`, in the
/// extensions) and the simulator's request. A type of your own stores an
/// `Option<Criticality>`:
///
/// ```
/// use backstop::context::{Criticality, HasCriticality};
///
/// struct Job { criticality: Option<Criticality> }
///
/// impl HasCriticality for Job {
///     fn criticality(&self) -> Option<Criticality> { self.criticality }
///     fn set_criticality(&mut self, c: Criticality) { self.criticality = Some(c) }
/// }
/// ```
pub trait HasCriticality {
    /// The criticality the request carries, if it was tagged.
    fn criticality(&self) -> Option<Criticality>;
    /// Tags the request.
    fn set_criticality(&mut self, criticality: Criticality);
}

#[cfg(feature = "http")]
impl HasCriticality for http::Extensions {
    fn criticality(&self) -> Option<Criticality> {
        self.get::<Criticality>().copied()
    }
    fn set_criticality(&mut self, criticality: Criticality) {
        match self.get_mut::<Criticality>() {
            Some(existing) => *existing = criticality,
            None => {
                self.insert(criticality);
            }
        }
    }
}

#[cfg(feature = "http")]
impl<B> HasCriticality for http::Request<B> {
    fn criticality(&self) -> Option<Criticality> {
        self.extensions().criticality()
    }
    fn set_criticality(&mut self, criticality: Criticality) {
        self.extensions_mut().set_criticality(criticality);
    }
}

/// How a layer that refuses by level learns a request's [`Criticality`].
pub trait CriticalityOf<Req> {
    /// The level the request is refused at.
    fn criticality_of(&self, request: &Req) -> Criticality;
}

/// Every request at the same level: the layer refuses without looking at criticality. The
/// default of every layer, and the one for request types without [`HasCriticality`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SameCriticality;

impl<Req> CriticalityOf<Req> for SameCriticality {
    fn criticality_of(&self, _request: &Req) -> Criticality {
        Criticality::default()
    }
}

/// Reads the level the request carries, else the one of the [scope](super) it is served in,
/// else the layer's default for untagged requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByCriticality {
    default: Criticality,
}

impl ByCriticality {
    /// Untagged requests (no tag on the request, none in the scope) count as `default`.
    pub fn new(default: Criticality) -> Self {
        ByCriticality { default }
    }

    /// The level of untagged requests.
    pub fn default_level(&self) -> Criticality {
        self.default
    }
}

impl<Req: HasCriticality> CriticalityOf<Req> for ByCriticality {
    fn criticality_of(&self, request: &Req) -> Criticality {
        request
            .criticality()
            .or_else(super::current_criticality)
            .unwrap_or(self.default)
    }
}

#[cfg(feature = "http")]
pub use self::headers::*;

#[cfg(feature = "http")]
mod headers {
    use http::{HeaderMap, HeaderName, HeaderValue, Request};

    use super::{Criticality, HasCriticality};

    /// The header (and, on HTTP/2, the gRPC metadata key) that carries a request's criticality.
    pub const CRITICALITY_HEADER: HeaderName = HeaderName::from_static("backstop-criticality");

    /// Reads the criticality from `headers`; `None` when absent or not one of the four levels.
    pub fn read_criticality(headers: &HeaderMap) -> Option<Criticality> {
        headers
            .get(CRITICALITY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// Writes `criticality` into `headers` (Google's upper-case spelling).
    pub fn write_criticality(headers: &mut HeaderMap, criticality: Criticality) {
        headers.insert(
            CRITICALITY_HEADER,
            HeaderValue::from_static(criticality.as_header_value()),
        );
    }

    /// For servers: tags the request with the criticality its headers carry (when it carries
    /// none yet). The sibling of
    /// [`inherit_deadline`](crate::timeout::headers::inherit_deadline); use both, or
    /// [`inherit_context`](crate::context::inherit_context), with
    /// `tower::util::MapRequestLayer`.
    pub fn inherit_criticality<B>(mut req: Request<B>) -> Request<B> {
        if req.criticality().is_none()
            && let Some(criticality) = read_criticality(req.headers())
        {
            req.set_criticality(criticality);
        }
        req
    }

    /// For clients: writes the request's criticality (or, when it carries none, the one of the
    /// [scope](crate::context) it is sent from) into its headers, so the next server sheds it
    /// at the right level. The sibling of
    /// [`send_deadline`](crate::timeout::headers::send_deadline). Nothing is written for an
    /// untagged request outside a tagged scope: the server's default applies.
    pub fn send_criticality<B>(mut req: Request<B>) -> Request<B> {
        if let Some(criticality) = req
            .criticality()
            .or_else(crate::context::current_criticality)
        {
            write_criticality(req.headers_mut(), criticality);
        }
        req
    }
}
