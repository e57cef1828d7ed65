//! Retries with a client-wide budget: at most one retry per request, and retries in aggregate
//! far below one per request.
//!
//! Per-request exponential backoff with several retries does not survive an overload: every
//! layer of a call chain multiplies the load (services 1 → 2 → 3 → 4, each retrying 3 times,
//! send up to 64× the traffic to service 4 during its outage). Amazon's rule after Prime Day
//! 2018: never more than one retry per request, and a client may retry only once it has seen 100
//! successes (a 1% retry rate), with the allowance shared by all of its requests.
//!
//! [`RetryLayer`] retries a failed request at most once, and only when:
//! - the classifier ([`Classify`](crate::classify::Classify), default
//!   [`ErrorClassifier`](crate::classify::ErrorClassifier); use
//!   [`HttpClassifier`](crate::classify::HttpClassifier) for HTTP) calls the outcome
//!   [`Retryable`](crate::classify::Outcome::Retryable). An overload (an
//!   [`Overloaded`](crate::Overloaded) error, a 429, a 503 with `Retry-After`) goes straight back
//!   to the caller;
//! - the request is idempotent: its [`RetryRequest::is_idempotent`] says so (for HTTP an
//!   idempotent method, GET, HEAD, OPTIONS, TRACE, PUT or DELETE, or the [`Idempotent`]
//!   marker), or it passes the predicate
//!   given to [`idempotent_if`](RetryLayerBuilder::idempotent_if), or the user opted in with
//!   [`retry_non_idempotent`](RetryLayerBuilder::retry_non_idempotent);
//! - the failure is not marked "decided below" ([`AlreadyRetried`] on an error, the
//!   [`RETRIED_HEADER`] on an HTTP response): a retry layer closer to the failure already saw
//!   it and retried it or declined to;
//! - enough time is left before the request's [`Deadline`](crate::timeout::Deadline) (at least
//!   [`min_time_left`](RetryLayerBuilder::min_time_left));
//! - and the shared [`Budget`] pays for it: a [`RetryBudget`] earns `ratio` of a token per
//!   success (default 0.01), charges 1 per retry after an error and 2 after a timeout, has a
//!   small time-based floor that lends only against successes seen, a cap, and starts empty.
//!
//! gRPC's retry throttling (the A6 design: start full, one token lost per failure, retries only
//! above half) is the other [`Budget`] provided: [`RetryThrottling`].
//!
//! Before the retry it waits a full-jitter delay that ends before the deadline, and at least the
//! server's pushback when it sent one ([`Classify::pushback`](crate::classify::Classify::pushback):
//! gRPC's `grpc-retry-pushback-ms`); a pushback that ends past the deadline means no retry. The retry is
//! marked ([`Attempt`]; the [`ATTEMPT_HEADER`] header for HTTP) so a load balancer can send it
//! to another server and servers can count retries.
//!
//! # Decided below
//! Every retryable failure the layer passes up goes up marked, whether it retried it or
//! declined to (budget empty, too little time left, not idempotent, no retries configured):
//! the decision was made once, by the layer closest to the failure ([`MarkRetried`]). Without
//! the mark on a declined retry, a refusal below becomes a retry above: in a chain of four
//! retrying services whose bottom fails, one request reached the bottom 3 times (5 with no
//! mark at all); with it, at most twice at any depth. Across processes the mark travels on the
//! response ([`RETRIED_HEADER`]), and a server that answers its caller with its own failure
//! carries it on with [`PropagateRetriedLayer`], so A → B → C over HTTP obeys it too.
//!
//! # Cancellation
//! The budget is charged when the retry is decided, before the delay, so that a burst of
//! failures cannot all pass the check and then all retry. If the response future is dropped
//! during the delay, the inner service fails to become ready, or waiting for it to become ready
//! leaves less than `min_time_left` before the deadline (the first failure is then passed up),
//! the retry is never sent and its price is refunded: a retry that never ran costs nothing.
//!
//! # Requests must be `Clone`
//! The first attempt consumes the request, so the layer keeps a clone for the retry (only when a
//! retry is possible). `http::Request<B>` is `Clone` when its body is; a streaming body such as
//! hyper's `Incoming` is not, so buffer it first:
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use hyper::body::{Body, Bytes};
//!
//! async fn buffered<B: Body>(req: http::Request<B>) -> Result<http::Request<Full<Bytes>>, B::Error> {
//!     let (parts, body) = req.into_parts();
//!     let bytes = body.collect().await?.to_bytes();
//!     Ok(http::Request::from_parts(parts, Full::new(bytes))) // Full<Bytes> is Clone
//! }
//! ```
//!
//! # When to use it
//! In clients, once, at the edge: below the overall timeout and above the per-attempt timeout
//! (`timeout(overall) → retry(budget) → ... → timeout(attempt) → transport`). Share one
//! [`RetryBudget`] across all the services of a client. A server whose handler calls other
//! services puts [`PropagateRetriedLayer`] on its own stack, so its failures carry the mark of
//! the failures it got.
//!
//! # Example
//! ```
//! use backstop::retry::{RetryBudget, RetryLayer, RetryRequest};
//! use backstop::timeout::{Deadline, HasDeadline};
//! use backstop::BoxError;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! #[derive(Clone)]
//! struct Get(&'static str);
//! impl HasDeadline for Get {
//!     fn deadline(&self) -> Option<Deadline> { None }
//!     fn set_deadline(&mut self, _: Deadline) {}
//! }
//! impl RetryRequest for Get {
//!     fn is_idempotent(&self) -> bool { true }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // The third call fails.
//! let calls = Arc::new(AtomicU32::new(0));
//! let flaky = {
//!     let calls = calls.clone();
//!     tower::service_fn(move |req: Get| {
//!         let n = calls.fetch_add(1, Ordering::Relaxed);
//!         async move {
//!             if n == 2 { Err::<&str, BoxError>("reset".into()) } else { Ok(req.0) }
//!         }
//!     })
//! };
//! let budget = RetryBudget::builder("kv").ratio(0.5).min_per_second(0.0).build()?;
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(budget.clone()))
//!     .service(flaky);
//!
//! client.ready().await?.call(Get("a")).await?; // success: deposits 0.5
//! client.ready().await?.call(Get("b")).await?; // success: deposits 0.5
//! // This one fails once; the budget holds 1 token, so it is retried and succeeds.
//! assert_eq!(client.ready().await?.call(Get("c")).await?, "c");
//! assert_eq!(budget.stats().granted, 1);
//! # Ok(())
//! # }
//! ```

mod budget;
mod future;
mod layer;
mod marker;
mod propagate;
mod service;
mod throttling;

pub use self::budget::{Budget, RetryBudget, RetryBudgetBuilder, RetryBudgetStats, RetryKind};
pub use self::future::ResponseFuture;
pub use self::layer::{MarkRetried, RetryLayer, RetryLayerBuilder};
#[cfg(feature = "http")]
pub use self::marker::http_method_is_idempotent;
pub use self::marker::{
    ATTEMPT_HEADER, AlreadyRetried, AnyRequest, Attempt, Idempotency, Idempotent, IdempotentFn,
    MarkedIdempotent, RETRIED_HEADER, RetriedMarker, RetryRequest,
};
pub use self::propagate::{PropagateFuture, PropagateRetried, PropagateRetriedLayer};
pub use self::service::Retry;
pub use self::throttling::{RetryThrottling, RetryThrottlingBuilder};
