//! A client-wide token bucket, with a rate that can follow the server (the AWS SDKs' adaptive
//! retry mode).
//!
//! When a server throttles, a client whose every caller has its own retry loop sends *more*:
//! each refusal comes back as another request. The client-side fix is one bucket for every
//! request of the client: [`TokenBucketLayer`] makes each request take a token from one shared
//! [`TokenBucket`], and refuses (`Overloaded { reason: RateLimited, retry_after }`) or waits
//! when it is empty.
//!
//! # The bucket
//! [`TokenBucket`] is a cheap `Clone` handle; clones share one bucket. Its state is one
//! `AtomicU64` (tokens in 256ths and the last refill time in milliseconds, packed), updated
//! by a compare-and-swap loop; the refill is computed from the bucket's [`Clock`] when asked,
//! exactly in integers. [`try_acquire`](TokenBucket::try_acquire) never waits;
//! [`acquire`](TokenBucket::acquire) waits in a first-come-first-served line (a short lock on
//! that slow path only), so a large request is not starved by small ones, and a dropped waiter
//! takes nothing. Rate and capacity change at run time ([`set_rate`](TokenBucket::set_rate),
//! [`set_capacity`](TokenBucket::set_capacity)).
//!
//! A grant reads the clock once, and that read is a large part of its cost. The default
//! [`Clock`] is resolved when the bucket is built: tokio's clock inside a runtime whose clock is
//! paused (so tests that pause drive the bucket), the CPU's counter through `quanta` everywhere
//! else (governor's default, a few ns a read). The trap: a bucket built *before*
//! `tokio::time::pause()` runs on the real counter; build it after, or choose
//! [`Clock::tokio`]. `cargo bench --bench ratios` measures the bucket against governor's direct
//! `RateLimiter::check` with the same quota, each on its default clock.
//!
//! # The adaptive rate
//! Built with [`adaptive`](TokenBucketBuilder::adaptive)([`AdaptiveRate::aws`]), the layer reads
//! each response through [`Classify`](crate::classify::Classify): an
//! [`Outcome::Overload`](crate::classify::Outcome::Overload) (a 429, an `Overloaded` from below)
//! cuts the rate to β = 0.7 of the measured send rate, and other outcomes let it climb back along
//! the CUBIC curve `C (t − K)³ + Wmax` with C = 0.4 and `K = ∛(Wmax (1 − β) / C)`. The send rate
//! is measured in 0.5 s buckets smoothed with 0.8 (the first taken whole, from the first
//! response); the rate stays within `[min_rate, max_rate]` (at least 0.5/s by default) and
//! never above twice the measured send rate. The bucket is
//! unlimited until the first throttle, or starts at a configured rate.
//!
//! The rate is cut once per congestion event, as TCP cuts once per round trip: the layer tells
//! the bucket when each request was sent, and an overload answer to a request sent before the
//! last cut does not cut again (it was sent at the old rate). The AWS SDKs cut at every throttle
//! answer; when a server starts refusing with hundreds of requests in flight, that compounds to
//! 0.7ⁿ, down to the floor. A throttle before the first half-second measurement has closed cuts
//! from the rate counted so far, not from 0.
//!
//! Against a server that throttles above 100 requests/s after 20 ms, a client offering 300/s
//! sends within 10% of 100/s in the first simulated second, then between 83 and 108 per second
//! (mean 97/s over the last 30 s), and gets 20 throttled answers in a minute where the same
//! client without the bucket gets 11 991. With a 200 ms round trip (60 requests in flight when
//! the refusals start) it sends 97/s over the last 30 s, where cutting at every throttle answer
//! fell to the 0.5/s floor and sent 34/s (`cargo run --release --example adaptive_bucket`).
//!
//! # Retry quota
//! [`TokenBucket`] implements the retry layer's [`Budget`](crate::retry::Budget) in AWS standard
//! mode (a retry takes 5 tokens, 10 after a timeout, a success gives 1 back), and
//! [`TokenBucket::retry_quota`] is the standard 500-token quota, which time does not refill:
//! `RetryLayer::new(TokenBucket::retry_quota("client"))`.
//!
//! # Where it goes
//! On a client, below the retry layer so retries take tokens too, and above the per-attempt
//! timeout: `metrics → timeout(overall) → retry → hedge → token_bucket → timeout(attempt)`.
//!
//! # Metrics
//! `backstop_token_bucket_tokens` and `backstop_token_bucket_rate` (gauges),
//! `backstop_token_bucket_acquired_total` and `backstop_token_bucket_denied_total` (counters),
//! labelled `name` ([`crate::metrics::names`]). A grant makes no `metrics` call: the bucket
//! counts in per-thread shards and publishes at most every 100 ms of its clock, at a grant or a
//! refusal; [`crate::metrics::publish`] (before rendering a scrape) makes them exact at once.
//!
//! # Example
//! ```
//! use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
//! use backstop::{BoxError, OverloadReason, Overloaded, find_overload};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let bucket = TokenBucket::builder("client")
//!     .adaptive(AdaptiveRate::aws().build()?)
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(TokenBucketLayer::new(bucket.clone()))
//!     .service_fn(|throttle: bool| async move {
//!         if throttle {
//!             Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
//!         } else {
//!             Ok(())
//!         }
//!     });
//!
//! assert_eq!(bucket.rate(), None); // unlimited until the server says "slow down"
//! for _ in 0..5 {
//!     svc.ready().await?.call(false).await?;
//!     tokio::time::advance(std::time::Duration::from_millis(10)).await; // 100 a second
//! }
//! let _ = svc.ready().await?.call(true).await; // a throttle: cut to 0.7 of the send rate
//! assert!(bucket.rate().is_some());
//! // The bucket starts empty after a throttle: the next request is refused at once.
//! let refused = svc.ready().await?.call(false).await.unwrap_err();
//! assert_eq!(
//!     find_overload(refused.as_ref()).unwrap().reason(),
//!     OverloadReason::RateLimited
//! );
//! # Ok(())
//! # }
//! ```

mod adaptive;
mod bucket;
mod future;
mod layer;
#[cfg(all(test, backstop_loom))]
mod loom_model;
mod quota;
mod service;

pub use self::adaptive::{AdaptiveRate, AdaptiveRateBuilder, cubic_k};
pub use self::bucket::{MAX_CAPACITY, MAX_RATE, TokenBucket, TokenBucketBuilder};
// The clock lives in `crate::clock` (every hot path reads it); re-exported here so code that
// names it from the bucket's module keeps compiling.
pub use self::future::{Acquire, ResponseFuture};
pub use self::layer::{TokenBucketLayer, TokenBucketLayerBuilder};
pub use self::quota::{RETRY_COST, SUCCESS_REFUND, TIMEOUT_RETRY_COST};
pub use self::service::TokenBucketService;
pub use crate::clock::{Clock, ManualTime};
