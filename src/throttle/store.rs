//! [`QuotaStore`]: where a throttle's per-client quotas live, in this process or across a fleet.

use std::fmt;
use std::time::Duration;

use super::key::ClientId;
use super::quota::ClientQuotas;

/// Holds clients to their quotas for a [`ThrottleLayer`](super::ThrottleLayer).
///
/// Two stores ship: [`ClientQuotas`], each process on its own, and (feature `redis`)
/// `backstop::fleet::FleetQuotas`, one quota shared by every process of a fleet through Redis.
/// The throttle calls [`check`](Self::check) in its `call`, so a store decides without waiting:
/// a store backed by a network keeps its round trips off the request path.
///
/// A request reads the clock once: a store that has one says so with [`now`](Self::now), and
/// the layer then calls [`check_at`](Self::check_at) with that reading and uses it for the
/// shedding epoch too. A store that keeps the defaults is called through `check` and reads its
/// own time, if any.
pub trait QuotaStore: fmt::Debug + Send + Sync + 'static {
    /// Takes one request from `key`'s quota: `Err(wait)` when the client is over it, with the
    /// time until its next request would conform.
    fn check(&self, key: &ClientId) -> Result<(), Duration>;

    /// Nanoseconds on the store's clock since some origin of its own (monotonic), or `None`
    /// (the default) for a store that takes no reading from the layer.
    fn now(&self) -> Option<u64> {
        None
    }

    /// [`check`](Self::check) at `now`, a reading of [`now`](Self::now) taken for this
    /// request. The default ignores `now` and calls `check`.
    fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        let _ = now;
        self.check(key)
    }
}

impl QuotaStore for ClientQuotas {
    fn check(&self, key: &ClientId) -> Result<(), Duration> {
        ClientQuotas::check(self, key)
    }

    #[inline]
    fn now(&self) -> Option<u64> {
        Some(ClientQuotas::now(self))
    }

    #[inline]
    fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        ClientQuotas::check_at(self, key, now)
    }
}
