//! Little's-law metrics: in-flight, outcomes, latency sums and the concurrency they imply.
//!
//! **Install your metrics recorder before you build any backstop layer.** Every layer registers
//! its series when it is built, so they read 0 before the first request; the `metrics` facade
//! gives a layer built before a recorder exists handles that go nowhere, and its series never
//! appear.
//!
//! Little's law says the average number of requests in a system equals the arrival rate times
//! the average time each spends there: `L = λW`. Over a fixed window, the sum of the latencies of
//! the requests served, divided by the window, is the average concurrency. Against the capacity
//! of what serves them (a pool of 8 workers, a lock's 1), that is the headroom left, and an alarm
//! should sound well before the sum of latencies reaches the whole window times the capacity.
//!
//! [`LittleLayer`] records every request through a shared [`LittleMeter`] and exports, through
//! the [`metrics`](https://docs.rs/metrics) facade, the series named in [`names`]: in-flight,
//! requests by outcome, the latency sum, the exact concurrency-seconds area, and the average
//! concurrency and utilization over the last window. Every series is registered, reading 0, when
//! the meter is built: a zero tells you the fix worked, a missing series that reporting broke.
//! The request path touches no series: the meter keeps its sums in per-thread shards and
//! publishes them every 100 ms (at an event) and at each window's end; call [`publish`] (every
//! meter and token bucket) or [`LittleMeter::publish`] before a scrape for figures exact to the
//! last request.
//!
//! In a test, build the meter after `tokio::time::pause()` (or give it
//! [`Clock::tokio`](crate::clock::Clock::tokio)): its default clock, chosen at build, is the
//! CPU's counter outside a paused runtime, which the test's `advance` does not move.
//!
//! # When to use it
//! Outermost in a client or server stack, to see what the callers see; and around any resource
//! whose capacity you know (a connection pool, a lock, a worker pool), to see its headroom.
//!
//! # Example
//! ```
//! use backstop::metrics::{LittleLayer, LittleMeter};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! let meter = LittleMeter::builder("checkout").capacity(4.0).build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(LittleLayer::new(meter.clone()))
//!     .service_fn(|_req: ()| async {
//!         tokio::time::sleep(Duration::from_millis(200)).await;
//!         Ok::<_, backstop::BoxError>("done")
//!     });
//!
//! let before = meter.snapshot();
//! svc.ready().await?.call(()).await?;
//! let report = meter.snapshot().since(&before);
//! assert_eq!(report.completions, 1);
//! assert_eq!(report.mean_latency, Some(Duration::from_millis(200)));
//! assert_eq!(report.average_concurrency, 1.0); // one request, busy the whole interval
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
#[cfg(all(test, backstop_loom))]
mod loom_model;
mod meter;
pub mod names;
pub(crate) mod publish;
mod retire;
mod service;
pub(crate) mod shard;

pub use self::future::ResponseFuture;
pub use self::layer::LittleLayer;
pub use self::meter::{InFlight, LittleMeter, LittleMeterBuilder, LittleReport, LittleSnapshot};
pub use self::publish::publish;
pub use self::service::Little;
