//! Whole-client throttling on the server: all of a client's requests, or none.
//!
//! A control loop needs load to fall when it throttles more. Refusing a random fraction `p` of
//! requests does not do that: clients run chains of dependent calls inside retry loops, so a
//! refused call is sent again, and a chain that fails at its third call has wasted the first
//! two. In the plain model (3 calls, each tried up to 3 times) the requests reaching the server
//! *rise* to about 1.5× the unthrottled level near `p` = 60% before they fall. Refusing whole
//! clients fixes it: a throttled client fails at its first call, the others are untouched, so
//! admitted work falls as `1 − p` and total load never rises (and falls too when the clients'
//! retry layer does not retry refusals, as backstop's does not). `examples/throttle_sweep.rs`
//! measures all three on the simulation harness.
//!
//! The pieces:
//! - [`ClientKey`] finds a request's client ([`ClientId`]): a header ([`HeaderKey`],
//!   `x-client-id` by default), an authenticated [`Principal`] in the extensions
//!   ([`PrincipalKey`]), the remote address ([`RemoteAddrKey`]), or any closure. `HeaderKey`
//!   falls back to the remote address when the header is missing. Requests with no key at all
//!   are one shared client (the default), refused, or let through ([`MissingKey`]), and
//!   counted in `backstop_throttle_keyless_requests_total` whichever you choose.
//! - [`ShedFraction`] is a shared handle with [`set`](ShedFraction::set) /
//!   [`get`](ShedFraction::get) for a signal (the PID admission controller, a load gauge, an
//!   operator) to say what fraction of clients to shed. The choice is a seeded hash of the
//!   client key: stable (raising `p` only adds clients), fleet-consistent (same seed, same
//!   clients on every server) and rotating on a slow epoch.
//! - [`ClientQuotas`] holds every client to a rate quota (GCRA) with per-key overrides, in a
//!   table of fixed size and 16 bytes per client (a 64-bit fingerprint, never the key): a flood
//!   of new keys cannot grow memory, and cannot get a client refused but by its own quota.
//! - [`QuotaStore`] is where quotas live: [`ClientQuotas`] in this process, or (feature
//!   `redis`) `backstop::fleet::FleetQuotas`, one quota for a whole fleet kept in Redis.
//! - [`ThrottleLayer`] applies both, shedding first, and refuses with
//!   [`Overloaded`](crate::Overloaded)`{ reason: Throttled, retry_after }`.
//! - With the `http` feature, [`Overloaded::to_http_response`](crate::Overloaded::to_http_response)
//!   and [`overload_to_response`] make any backstop refusal a 429 (client asks too much) or 503
//!   (server is full) with `Retry-After`.
//!
//! # Cancellation
//! The decision is made in `call`, before the inner service sees the request, and the throttle
//! holds nothing while the request runs: a dropped response future has nothing to give back. A
//! quota counts requests sent, as governor does, so an admitted request that is then cancelled
//! has spent its token; a shed request spends none.
//!
//! # Cost
//! A known client's request reads the clock once (the quotas' [`Clock`](crate::token_bucket::Clock),
//! which also dates the shedding epoch), hashes its key once (twice while some clients are shed:
//! the fleet-wide [`stable_hash`] is a specified function, the quota fingerprint a secret one)
//! and takes no lock. Decisions are counted in the layer's own per-thread counters and published
//! in batches ([`ThrottleLayer::publish`], `backstop::metrics::publish()`), never by a `metrics`
//! call per request.
//!
//! # When to use it
//! On servers, outermost after metrics (`metrics → throttle → pid admission → queue → timeout →
//! handler`), so a throttled client costs one hash and one atomic. Give every server of a fleet
//! the same seed so a shed client is refused everywhere rather than retried until it finds a
//! server that lets it through. Quotas per client stop one client from taking everyone's
//! capacity; shedding by client makes the load actually fall when a controller asks it to.
//!
//! # Example
//! ```
//! use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
//! use backstop::{find_overload, BoxError, OverloadReason};
//! use std::num::NonZeroU32;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // One handle for the fleet's setting; the PID controller (or you) moves it.
//! let shed = ShedFraction::builder("api").seed(0x5eed).build()?;
//! let quotas = ClientQuotas::builder("api", Quota::per_second(NonZeroU32::new(100).unwrap())).build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(ThrottleLayer::builder("throttle", HeaderKey::default()).shed(shed.clone()).quotas(quotas).build()?)
//!     .service_fn(|_req: http::Request<()>| async { Ok::<_, BoxError>("ok") });
//!
//! let request = |client: &str| http::Request::builder().header("x-client-id", client).body(()).unwrap();
//! assert_eq!(svc.ready().await?.call(request("alice")).await?, "ok");
//!
//! shed.set(1.0); // shed every client
//! let err = svc.ready().await?.call(request("alice")).await.unwrap_err();
//! assert_eq!(find_overload(err.as_ref()).unwrap().reason(), OverloadReason::Throttled);
//! # Ok(())
//! # }
//! ```
mod error;
mod future;
mod key;
mod layer;
mod quota;
mod service;
mod shed;
mod store;
mod table;

pub use self::error::MissingClientKey;
pub use self::future::ResponseFuture;
// Re-exported from the HTTP edge, where they live, for code that found them here first.
pub use self::key::{ClientId, ClientKey, MissingKey};
#[cfg(feature = "http")]
pub use self::key::{HeaderKey, Principal, PrincipalKey, RemoteAddrKey};
pub use self::layer::{ThrottleLayer, ThrottleLayerBuilder};
pub use self::quota::{ClientQuotas, ClientQuotasBuilder};
pub use self::service::Throttle;
pub use self::shed::{ShedFraction, ShedFractionBuilder, stable_hash};
pub use self::store::QuotaStore;
#[cfg(feature = "http")]
#[doc(no_inline)]
pub use crate::http::{DEFAULT_RETRY_AFTER, overload_to_response};
pub use governor::Quota;
