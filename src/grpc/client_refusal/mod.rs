//! On a gRPC client, the calls the client's own layers refuse or time out reach the caller as
//! the gRPC status a server would have sent, not as `UNKNOWN`.
//!
//! A tonic client turns any error of the service under it into a `Status`. It knows its own
//! transport errors (a failed connect becomes `UNAVAILABLE`) but not backstop's: a call the
//! client's token bucket, retry budget or [`ClientThrottleLayer`](crate::client_throttle) refused,
//! or whose deadline passed in the client's [`TimeoutLayer`](crate::timeout::TimeoutLayer),
//! reaches the caller as `UNKNOWN` with the error's text, and code that decides by the status
//! (retry it? shed it? tell the user to wait?) cannot tell a local refusal from a bug.
//!
//! [`ClientRefusalLayer`], outermost in the stack that tonic's client wraps (just under
//! `tonic::client::Grpc` or the generated client), answers backstop's own errors with the
//! trailers-only answer a server would send ([`error_to_grpc`](super::error_to_grpc)), which tonic
//! reads as that status, and passes every other error through untouched, so tonic keeps its own
//! mapping of transport errors:
//!
//! | error (anywhere in its source chain) | status the caller gets |
//! |---|---|
//! | any [`Overloaded`](crate::Overloaded) (the client's bucket, budget, throttle, queue) | `RESOURCE_EXHAUSTED`, with `grpc-retry-pushback-ms` in its metadata |
//! | a timeout ([`is_timeout`](crate::is_timeout)) | `DEADLINE_EXCEEDED` |
//! | anything else (a transport error) | unchanged: tonic's own mapping |
//!
//! Every local refusal is `RESOURCE_EXHAUSTED`, whatever stage refused, even where a server
//! would answer `UNAVAILABLE` (a full queue): gRPC clients and A6 retry `UNAVAILABLE`, and a
//! caller that retries the client's own refusal sends the load the refusal was there to stop.
//! A client that is full now is full on the next attempt too; `RESOURCE_EXHAUSTED` is retried by
//! no default policy.
//!
//! Layers above it (a retry layer of tonic's, an interceptor) then see the same status and the
//! same pushback whether the refusal was the server's or the client's own, so a caller that
//! never retries `RESOURCE_EXHAUSTED` does not retry the client's own refusal either.
//!
//! The layer holds nothing of its own: dropping its future drops the inner one, with every
//! permit and token it holds. A refusal from the inner `poll_ready` answers the next call;
//! any other readiness error is returned as it is.
//!
//! # Example
//! ```
//! use backstop::grpc::ClientRefusalLayer;
//! use backstop::{OverloadReason, Overloaded};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A stack whose client-side limit refuses the call (here, plainly, with a 50 ms pushback).
//! let stack = ServiceBuilder::new()
//!     .layer(ClientRefusalLayer::new())
//!     .service_fn(|_req: http::Request<()>| async {
//!         let refusal = Overloaded::new(OverloadReason::RateLimited)
//!             .with_retry_after(Duration::from_millis(50));
//!         Err::<http::Response<String>, _>(backstop::BoxError::from(refusal))
//!     });
//! let res = stack.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED, as tonic will report it
//! assert_eq!(res.headers()["grpc-retry-pushback-ms"], "50");
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::ClientRefusalLayer;
pub use self::service::ClientRefusal;

/// The status the caller gets for one of backstop's own errors; `None` for any other error.
fn client_code(err: &crate::BoxError) -> Option<crate::grpc::Code> {
    let err = err.as_ref() as &(dyn std::error::Error + 'static);
    if crate::is_overload(err) {
        Some(crate::grpc::Code::RESOURCE_EXHAUSTED)
    } else if crate::is_timeout(err) {
        Some(crate::grpc::Code::DEADLINE_EXCEEDED)
    } else {
        None
    }
}
