//! Every error of a gRPC server stack becomes a trailers-only gRPC answer, so
//! `tonic::transport::Server::builder().layer(...)` takes the stack as it is.
//!
//! backstop's layers fail with a `BoxError` (a refusal is an [`Overloaded`](crate::Overloaded)
//! error, a passed deadline an `Elapsed`). A gRPC client reads a status, not an HTTP error:
//! HTTP 429 and 503 reach it as `UNAVAILABLE` or `UNKNOWN` through the HTTP-to-gRPC mapping, and
//! lose the refusal's hint. [`ErrorToGrpcLayer`], outermost in the server stack, answers every
//! error with HTTP 200, `content-type: application/grpc` and the status in the headers (gRPC's
//! "trailers-only" answer, which every gRPC client reads), with an empty body:
//!
//! | error (anywhere in its source chain) | `grpc-status` | `grpc-retry-pushback-ms` |
//! |---|---|---|
//! | [`Overloaded`](crate::Overloaded) `Throttled`, `RateLimited` (the client asks too much) | `RESOURCE_EXHAUSTED` (8) | the refusal's retry-after |
//! | any other [`Overloaded`](crate::Overloaded) (the server is full) | `UNAVAILABLE` (14) | the refusal's retry-after |
//! | a timeout ([`is_timeout`](crate::is_timeout)) | `DEADLINE_EXCEEDED` (4) | none |
//! | anything else | `UNKNOWN` (2) | none |
//!
//! The pushback is in whole milliseconds, rounded up; a refusal that names no time gets
//! [`DEFAULT_RETRY_AFTER`](crate::http::DEFAULT_RETRY_AFTER). A gRPC client following A6
//! never retries `RESOURCE_EXHAUSTED` unless configured to, and retries `UNAVAILABLE` (on
//! another server, behind a balancer) no sooner than the pushback; a backstop client reads the
//! first as an overload (never retried) and the second as retryable after the pushback, within
//! its budget, and its adaptive token bucket counts both as throttles.
//!
//! The layer holds nothing of its own: dropping its future drops the inner one, with every
//! permit it holds. Errors from the inner `poll_ready` answer the next call.
//!
//! # Example
//! ```
//! use backstop::grpc::ErrorToGrpcLayer;
//! use backstop::{BoxError, OverloadReason, Overloaded};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let full = tower::service_fn(|_req: http::Request<()>| async {
//!     let refusal = Overloaded::new(OverloadReason::QueueFull)
//!         .with_retry_after(Duration::from_millis(250));
//!     Err::<http::Response<String>, BoxError>(refusal.into())
//! });
//! let mut server = ServiceBuilder::new().layer(ErrorToGrpcLayer::new()).service(full);
//! let res = server.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["content-type"], "application/grpc");
//! assert_eq!(res.headers()["grpc-status"], "14");
//! assert_eq!(res.headers()["grpc-retry-pushback-ms"], "250");
//! # }
//! ```
//!
//! The whole server stack in a tonic server is in `examples/grpc_service.rs`.

mod future;
mod layer;
mod respond;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::ErrorToGrpcLayer;
pub(crate) use self::respond::answer_with;
pub use self::respond::{GrpcAnswer, OnGrpcError, error_code, error_to_grpc};
pub use self::service::ErrorToGrpc;
