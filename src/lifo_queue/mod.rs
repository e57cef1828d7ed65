//! Adaptive LIFO: serve the oldest first while healthy, the newest first once behind, and never
//! run a request whose caller has probably left.
//!
//! Under overload a FIFO queue serves exactly the requests whose callers have already given up:
//! every answer comes too late, goodput falls to zero and stays there after the surge, because
//! the backlog must drain before anyone is served in time. [`LifoQueueLayer`] puts a wait queue
//! in front of a concurrency limit and changes its order with its health, as Facebook's servers
//! do (adaptive LIFO with a CoDel queue timeout):
//!
//! - **Healthy** (the queue has been empty at some point in the last `interval`, default 100 ms):
//!   waiters are served oldest first and may wait up to `interval`.
//! - **Behind** (the queue has not been empty for `interval`): waiters are served *newest* first,
//!   so the requests whose callers are still there get done, and a waiter that has waited longer
//!   than `target` (default 5 ms) is dropped. The switch happens at the same instant for every
//!   waiter: those older than `target` then are dropped at once.
//! - **Drained**: once the queue empties it is healthy again and FIFO.
//!
//! A waiter whose [`Deadline`](crate::timeout::Deadline) has passed (read with
//! [`HasDeadline`](crate::timeout::HasDeadline), or not at all after
//! [`ignore_deadlines`](LifoQueueLayerBuilder::ignore_deadlines)) is dropped too. A dropped
//! waiter's future fails with [`Overloaded`](crate::Overloaded)`{ reason: Shed }` and the handler
//! never runs. Each waiter keeps one timer at the exact instant its bound runs out, so a shed
//! happens on time even when no request finishes; and a request about to be granted a slot is
//! checked again, so none is run past its bound. More than `max_waiting` waiters (default 1024) is
//! refused at once with `QueueFull`. A dropped waiting future leaves the queue at once, wherever it
//! stands; a dropped running one frees its slot.
//!
//! **Sidelining** (off by default, [`sideline`](LifoQueueLayerBuilder::sideline)): instead of
//! dropping a waiter at the CoDel bound, move it to a second, low-priority list, served (newest
//! first) only when the main list is empty, and drop it once it has waited the sideline's total
//! bound or its deadline passes. Use it when old requests are still worth doing after the surge
//! (idempotent work whose callers wait long), at the price of some work done for callers who
//! have left.
//!
//! [`AdaptiveQueue::is_behind`] says which order the queue serves in now; [`AdaptiveQueue::stats`]
//! counts waiters served FIFO, LIFO and from the sideline. The gauges
//! `backstop_queue_length`, `backstop_queue_oldest_wait_seconds`, `backstop_queue_behind` and the
//! counter `backstop_refused_total{reason}` are in [`crate::metrics::names`].
//!
//! # When to use it
//! On a server whose callers have timeouts, in front of the handler (below admission control,
//! above a per-request [`TimeoutLayer`](crate::timeout::TimeoutLayer)). It keeps goodput near
//! capacity during a surge and recovers at once when the surge ends: there is no stale backlog.
//! For HTTP build it with [`hold_until_body_end`](LifoQueueLayerBuilder::hold_until_body_end), so
//! a slot is held until the body has been sent.
//!
//! # No false overloads
//! As with [`BackpressureLayer`](crate::backpressure::BackpressureLayer), the service is always
//! ready and admission is decided in `call` from the true counts (one compare-and-swap while
//! nobody waits, one short lock once someone does). tokio's
//! cooperative budget cannot make this layer refuse a request while a slot is free (the
//! `Buffer` + `LoadShed` trap, apollographql/router #9034): no semaphore or channel is polled to
//! decide admission, waiters are woken by a direct hand-over of the slot, and a shed is decided
//! from the clock, never from a `Pending`. While anyone waits every slot is taken, so a waiter
//! exists only when capacity really is used up. (A waiter's timer is a tokio `Sleep`, which does
//! obey the budget: an exhausted budget can only make a shed happen a little later, and the
//! grant path checks the bound again, so it never makes one happen early.)
//!
//! # Example
//! ```
//! use backstop::lifo_queue::LifoQueueLayer;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! let layer = LifoQueueLayer::builder("lifo_queue")
//!     .max_in_flight(1)
//!     .target(Duration::from_millis(30))
//!     .interval(Duration::from_millis(100))
//!     .ignore_deadlines() // plain u64 requests carry no deadline
//!     .build()?;
//! let queue = layer.queue().clone();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|id: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(10)).await; // 100 requests/s at most
//!     Ok::<_, backstop::BoxError>(id)
//! });
//!
//! // 250 requests/s for 0.4 s: the queue never empties, so after 100 ms it is behind.
//! let mut calls = Vec::new();
//! for id in 0..100 {
//!     calls.push(tokio::spawn(svc.ready().await?.call(id)));
//!     tokio::time::sleep(Duration::from_millis(4)).await;
//! }
//! assert!(queue.is_behind());
//! let (mut served, mut shed) = (0, 0);
//! for call in calls {
//!     match call.await? {
//!         Ok(_) => served += 1,
//!         Err(e) if backstop::is_overload(e.as_ref()) => shed += 1,
//!         Err(e) => return Err(e),
//!     }
//! }
//! assert_eq!(served + shed, 100); // every request got exactly one answer
//! let stats = queue.stats();
//! assert!(stats.served_lifo > 0 && stats.waiting == 0 && stats.in_flight == 0);
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod queue;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::{LifoQueueLayer, LifoQueueLayerBuilder};
pub use self::queue::AdaptiveQueue;
pub use self::service::LifoQueue;
pub use crate::backpressure::{Hold, Permit, QueueStats, UntilResponse};
#[cfg(feature = "http")]
pub use crate::backpressure::{PermitBody, UntilBodyEnd};
