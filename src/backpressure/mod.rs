//! Backpressure: a bounded number of requests in flight, a bounded line in front of them, and an
//! immediate `QueueFull` for everyone else.
//!
//! An unbounded queue turns a short surge into a long outage: it grows while the surge lasts,
//! every request in it waits longer than the one before, callers time out and retry, and the
//! server spends the next minutes answering people who have left. [`BackpressureLayer`] bounds
//! both numbers: at most `max_in_flight` requests run, at most `max_waiting` wait (served oldest
//! first), and the next one gets [`Overloaded`](crate::Overloaded)`{ reason: QueueFull }` at once,
//! which is the cheapest answer a server can give and tells the producer to slow down.
//!
//! The queue's health figure is the age of its oldest waiter: it is exported as the gauge
//! `backstop_queue_oldest_wait_seconds` next to `backstop_queue_length`, and refusals are
//! counted in `backstop_refused_total{reason="queue_full"}` (names in
//! [`crate::metrics::names`]). [`Limiter::stats`] reads the same figures exactly.
//!
//! # When to use it
//! On a server, in front of work with a known concurrency (a worker pool, a connection pool, CPU
//! cores), when serving in arrival order is fine. When a backlog must not make everyone late, use
//! [`LifoQueueLayer`](crate::lifo_queue::LifoQueueLayer) instead, which also sheds stale waiters.
//!
//! # How long a slot is held
//! By default until the response future completes. For HTTP, build with
//! [`hold_until_body_end`](BackpressureLayerBuilder::hold_until_body_end): the slot then travels
//! with the response in a [`PermitBody`] and is freed when the body ends or is dropped, so a slow
//! download counts against the limit for as long as it runs.
//!
//! # Criticality
//! Built with [`by_criticality`](BackpressureLayerBuilder::by_criticality), a full line makes
//! room for a request by shedding the oldest waiter of a lower
//! [`Criticality`](crate::context::Criticality) (it gets `Overloaded { reason: Shed }`), so a
//! full line never refuses a critical request while it holds a sheddable one; the line is still
//! served in arrival order. Without it, tags are ignored and a full line refuses the newcomer.
//!
//! # No false overloads
//! The service is always ready; admission is decided in `call` from the true counts of
//! requests in flight and waiting (an atomic count while nobody waits, a short
//! `std::sync::Mutex` around the line once someone does), and a refusal is returned by the
//! response future. tower's `Buffer` + `LoadShed` instead infer overload from a
//! readiness check that returned `Pending`, and tokio's cooperative budget makes a semaphore
//! return `Pending` when the task has used its budget even though permits are free
//! (apollographql/router #9034): the server then sheds with idle capacity. Nothing on this
//! layer's admission path asks tokio's budget; waiters are woken by a direct hand-over of the slot
//! from the request that finished. So `QueueFull` means the line really held `max_waiting`
//! requests. (tests/backpressure.rs checks this on a busy multi-thread runtime, next to a
//! `Buffer` + `LoadShed` control that does shed.)
//!
//! The fast path (a slot free, nobody waiting) takes no lock: one compare-and-swap to admit and
//! one `fetch_sub` to release, plus an atomic count of admissions for [`Limiter::stats`], a
//! reference-count bump for the permit and a clone of the inner service; no clock read, no allocation, no timer. Measured with `cargo bench --bench
//! ratios` (Prometheus recorder installed), it costs 0.88x tower's `ConcurrencyLimit` +
//! `LoadShed` per request (tower's semaphore takes its waiters' mutex on every release).
//!
//! # Example
//! ```
//! use backstop::backpressure::BackpressureLayer;
//! use backstop::{OverloadReason, find_overload};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! let layer = BackpressureLayer::builder("backpressure").max_in_flight(1).max_waiting(1).build()?;
//! let limiter = layer.limiter().clone();
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|ms: u64| async move {
//!         tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
//!         Ok::<_, backstop::BoxError>(ms)
//!     });
//!
//! let running = svc.ready().await?.call(100); // takes the only slot
//! let waiting = svc.ready().await?.call(10); // waits
//! let refused = svc.ready().await?.call(10).await; // line full: refused at once
//! assert_eq!(
//!     find_overload(refused.unwrap_err().as_ref()).unwrap().reason(),
//!     OverloadReason::QueueFull
//! );
//! assert_eq!(limiter.waiting(), 1);
//! let (a, b) = tokio::join!(running, waiting);
//! assert_eq!((a?, b?), (100, 10));
//! assert_eq!(limiter.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

pub(crate) mod admit;
mod future;
pub(crate) mod gate;
mod layer;
mod limiter;
#[cfg(all(test, backstop_loom))]
mod loom_model;
mod permit;
mod service;

pub use self::future::ResponseFuture;
pub use self::gate::QueueStats;
pub use self::layer::{BackpressureLayer, BackpressureLayerBuilder};
pub use self::limiter::Limiter;
pub use self::permit::{Hold, Permit, UntilResponse};
#[cfg(feature = "http")]
pub use self::permit::{PermitBody, UntilBodyEnd};
pub use self::service::Backpressure;
