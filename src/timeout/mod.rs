//! Timeouts with deadline propagation: each layer further down gets a smaller budget.
//!
//! A timeout that is too long holds resources; one that is too short causes retry storms; and a
//! timeout at one layer means nothing to the layers below unless it travels with the request.
//! [`TimeoutLayer`] gives each call the sooner of two limits:
//!
//! - its own timeout, counted from the moment the service was first polled for readiness for this
//!   request (so time spent waiting for a concurrency permit or a bucket token counts: tower's
//!   `Timeout` starts its clock only in `call`);
//! - the caller's [`Deadline`], carried in the request, times a `fraction` (default 0.9), so the
//!   layer gives the layers below a little less than it has itself.
//!
//! It hands the sooner of the two down as the new [`Deadline`], so the next timeout layer down
//! computes its budget from a smaller remaining time. A request whose deadline has already
//! passed fails at once with [`Elapsed`] and never reaches the inner service. The error says
//! which limit ran out ([`ElapsedCause`]).
//!
//! When the request carries no deadline, the deadline of the [request context](crate::context)
//! it is sent from counts as the caller's: a handler's outgoing calls inherit the deadline of the
//! request it serves (precedence: the request's own deadline, then the scope's, then the layer's
//! own timeout).
//!
//! # How the deadline travels down
//! Without an allocation (tower's `Timeout` makes none either):
//!
//! - a request that already carries a deadline has it tightened in place;
//! - a request that carries none and can hold one for free (a type with an `Option<Deadline>`
//!   field, [`WithDeadline`]) gets it written in ([`HasDeadline::sets_deadline_for_free`]);
//! - an `http::Request` that carries none is left untouched (a new extension would cost a map
//!   and a boxed entry per request): the layer runs the inner `call`, and every poll of the inner
//!   future, inside a [context scope](crate::context) that holds the deadline. Nested scopes keep
//!   the earliest deadline, as gRPC-Go's and Finagle's contexts do.
//!
//! Every backstop layer that reads a deadline (a timeout below, [`RetryLayer`], [`LifoQueueLayer`],
//! a [`TokenBucketLayer`] that waits, [`HedgeLayer`], [`send_deadline`](headers::send_deadline))
//! takes the request's own first, then the scope's; code of your own below a timeout does the
//! same with [`context::effective_deadline`](crate::context::effective_deadline).
//!
//! Whatever runs inside that scope sees the deadline, so a handler right below a server's
//! timeout makes its outgoing calls under it; a deadline the request itself carries (one
//! inherited from `grpc-timeout`) reaches those calls only through a
//! [`ScopeLayer`](crate::context::ScopeLayer), which a server should keep innermost either way.
//!
//! The scope belongs to the task that calls the timeout. A service below it that calls *its*
//! inner service on another task, as tower's `Buffer` does on its worker, hides the scope from
//! everything below at `call` time (the futures it hands back are still polled in it). For such
//! a stack, [`always_write_deadline`](TimeoutLayerBuilder::always_write_deadline) writes the
//! deadline into every request, at the cost of that allocation.
//!
//! [`RetryLayer`]: crate::retry::RetryLayer
//! [`LifoQueueLayer`]: crate::lifo_queue::LifoQueueLayer
//! [`TokenBucketLayer`]: crate::token_bucket::TokenBucketLayer
//! [`HedgeLayer`]: crate::hedge::HedgeLayer
//!
//! Across the network, [`headers`] writes the remaining time as `grpc-timeout` (and a plain
//! milliseconds header) on the client and reads it back into a [`Deadline`] on the server.
//!
//! # When to use it
//! Everywhere a call can wait: an overall timeout at the top of a client stack, a smaller
//! per-attempt timeout just above the transport, and on a server a timeout that inherits the
//! caller's deadline so no one works on a request whose caller has left.
//!
//! # Example
//! ```
//! use backstop::context::effective_deadline;
//! use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! let mut client = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(2))?) // overall
//!     .layer(TimeoutLayer::builder().timeout(Duration::from_millis(500)).fraction(0.5).build()?)
//!     .service_fn(|req: http::Request<()>| async move {
//!         // The innermost service sees the smallest budget: in the scope for a request that
//!         // came without a deadline, in the request for one that came with it.
//!         let left = effective_deadline(&req).unwrap().remaining();
//!         Ok::<_, backstop::BoxError>((req.deadline().is_some(), left))
//!     });
//!
//! let (in_request, left) = client.ready().await?.call(http::Request::new(())).await?;
//! // min(500 ms, 0.5 × 2 s) = 500 ms, and the request left as it was.
//! assert_eq!((in_request, left), (false, Duration::from_millis(500)));
//!
//! // A caller's own 600 ms: 0.9 × 600 = 540 ms, then 0.5 × 540 = 270 ms, tightened in place.
//! let mut req = http::Request::new(());
//! req.set_deadline(Deadline::after(Duration::from_millis(600)));
//! let (in_request, left) = client.ready().await?.call(req).await?;
//! assert_eq!((in_request, left), (true, Duration::from_millis(270)));
//! # Ok(())
//! # }
//! ```

mod deadline;
mod deadline_of;
mod error;
mod future;
#[cfg(feature = "http")]
pub mod headers;
mod layer;
mod service;
mod with_deadline;

pub use self::deadline::{Deadline, HasDeadline};
pub use self::deadline_of::{DeadlineOf, FromRequest, NoDeadline};
pub use self::error::{Elapsed, ElapsedCause};
pub use self::future::ResponseFuture;
pub use self::layer::{TimeoutLayer, TimeoutLayerBuilder};
pub use self::service::Timeout;
pub use self::with_deadline::WithDeadline;
