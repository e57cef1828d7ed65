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
pub trait QuotaStore: fmt::Debug + Send + Sync + 'static {
    /// Takes one request from `key`'s quota: `Err(wait)` when the client is over it, with the
    /// time until its next request would conform.
    fn check(&self, key: &ClientId) -> Result<(), Duration>;
}

impl QuotaStore for ClientQuotas {
    fn check(&self, key: &ClientId) -> Result<(), Duration> {
        ClientQuotas::check(self, key)
    }
}
