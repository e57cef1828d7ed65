//! Every error of a server stack becomes an HTTP answer, so axum and hyper take the stack as
//! it is.
//!
//! backstop's layers follow tower's convention and fail with a `BoxError`: a refusal is an
//! [`Overloaded`](crate::Overloaded) error, a deadline that passed is an `Elapsed` error. An HTTP
//! server wants an answer instead, and axum's `Router::layer`, `route_layer` and `route_service`
//! accept only services whose error is `Infallible`. [`ErrorToResponseLayer`], outermost in the
//! server stack, turns every error into the answer a caller can act on:
//!
//! | error (anywhere in its source chain) | answer |
//! |---|---|
//! | [`Overloaded`](crate::Overloaded) `Throttled`, `RateLimited` (the client asks too much) | 429 Too Many Requests, `Retry-After` |
//! | any other [`Overloaded`](crate::Overloaded) (the server is full) | 503 Service Unavailable, `Retry-After` |
//! | a timeout ([`is_timeout`](crate::is_timeout): backstop's, tower's or tokio's `Elapsed`, an I/O timeout) | 504 Gateway Timeout |
//! | anything else | 500 Internal Server Error |
//!
//! `Retry-After` is in whole seconds, rounded up, at least 1 (the refusal's own hint, or
//! [`DEFAULT_RETRY_AFTER`](crate::http::DEFAULT_RETRY_AFTER)): the same answer as
//! [`Overloaded::to_http_response`](crate::Overloaded::to_http_response). A backstop client
//! reads a 429, or a 503 with `Retry-After`, as an overload and does not retry it
//! ([`HttpClassifier`](crate::classify::HttpClassifier)); a 504 tells it the time ran out on the
//! server, which a retry with the same deadline cannot fix.
//!
//! The bodies of these answers are empty: an error's text can name internal hosts, paths or
//! queries. [`expose_error_text`](ErrorToResponseLayer::expose_error_text) puts it in the body
//! for callers you trust, and [`on_error`](ErrorToResponseLayer::on_error) hands each error and
//! its status to a hook of yours, e.g. to log it ([`OnError`]). [`error_status`] is the mapping
//! alone, for your own handlers.
//!
//! The response body becomes a [`ResponseBody`]: the inner body, streamed unchanged (a body
//! holding a queue slot until its end, such as the LIFO queue's
//! [`PermitBody`](crate::backpressure::PermitBody), keeps holding it), or the error answer's
//! body. Its `Data` and `Error` are the inner body's, so axum's `Body` behind the stack stays a
//! body axum and hyper serve.
//!
//! Every request gets exactly one answer: the inner response, or its error's. An error from the
//! inner service's `poll_ready` answers the next call, so readiness never fails. The layer holds
//! nothing of its own: dropping its future drops the inner one, with every permit it holds.
//!
//! The service and its future are [`ErrorAnswer`] and [`AnswerFuture`], generic over an
//! [`Answer`]: how an error becomes a response and which hook hears of it. [`ErrorToResponse`]
//! is [`ErrorAnswer`] with [`HttpAnswer`]; the gRPC edge's `ErrorToGrpc` is the same mechanism
//! with its trailers-only answer.
//!
//! # When to use it
//! Outermost in every HTTP server stack, once, so each refusal below becomes its 429 or 503
//! (and a Little's-law meter right under it still sees the errors and counts refusals as
//! overloads). On the client side there is nothing to convert: keep the errors, the retry and
//! hedge layers read them.
//!
//! # Example: the server stack in an axum app
//! The recommended server stack (`inherit_deadline → metrics → throttle → queue → timeout`,
//! driven by a PID controller), under an axum `Router`, served by `axum::serve`:
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use backstop::classify::HttpClassifier;
//! use backstop::http::ErrorToResponseLayer;
//! use backstop::lifo_queue::LifoQueueLayer;
//! use backstop::metrics::{LittleLayer, LittleMeter};
//! use backstop::pid::{AdmissionController, QueueDelay};
//! use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
//! use backstop::timeout::{TimeoutLayer, headers::inherit_deadline};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::{ServiceBuilder, util::MapRequestLayer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), backstop::BoxError> {
//! // 16 workers: utilization is average concurrency over 16.
//! let meter = LittleMeter::builder("inventory_server").capacity(16.0).build()?;
//! // 16 at a time; newest first when behind; a waiter whose caller has left is dropped.
//! let queue = LifoQueueLayer::builder("lifo_queue").max_in_flight(16).hold_until_body_end().build()?;
//! // Whole clients are shed, stably and the same on every server sharing the seed...
//! let shed = ShedFraction::builder("inventory_server").seed(42).build()?;
//! // ...as far as a PID controller holding the queue delay at 20 ms asks. It ticks on its own
//! // task and refuses no request itself: it only moves the throttle's shed fraction.
//! let admission = AdmissionController::builder("admission", QueueDelay::of_queue(queue.queue()))
//!     .setpoint(0.020)
//!     .on_shed_fraction({
//!         let shed = shed.clone();
//!         move |fraction| shed.set(fraction)
//!     })
//!     .build()?;
//! let ticker = tokio::spawn(admission.run_ticker());
//! let quotas = ClientQuotas::builder("inventory_server", Quota::per_second(NonZeroU32::new(200).unwrap())).build()?;
//! let server_stack = ServiceBuilder::new()
//!     // Refusals become 429 (client over its share) or 503 (server full) with Retry-After,
//!     // timeouts 504, other errors 500: the stack cannot fail, as axum wants.
//!     .layer(ErrorToResponseLayer::new())
//!     // The caller's remaining time becomes this request's deadline.
//!     .layer(MapRequestLayer::new(inherit_deadline::<axum::body::Body>))
//!     .layer(LittleLayer::new(meter).with_classifier(HttpClassifier))
//!     // All of a client's requests or none of them.
//!     .layer(ThrottleLayer::builder("throttle", HeaderKey::default()).shed(shed).quotas(quotas).build()?)
//!     .layer(queue)
//!     // Stop working on a request once its caller has given up, and never take more than 5 s.
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))?);
//! let app = Router::new()
//!     .route("/stock", get(|| async { "42" }))
//!     .layer(server_stack);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(async move {
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async { stopped.await.ok(); })
//!         .await
//! });
//!
//! // One request over loopback, bounded in time.
//! let answer = tokio::time::timeout(Duration::from_secs(10), async {
//!     let mut tcp = tokio::net::TcpStream::connect(addr).await?;
//!     tcp.write_all(b"GET /stock HTTP/1.1\r\nhost: inventory\r\nx-client-id: shop\r\nconnection: close\r\n\r\n").await?;
//!     let mut answer = String::new();
//!     tcp.read_to_string(&mut answer).await?;
//!     Ok::<_, std::io::Error>(answer)
//! })
//! .await??;
//! assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
//! assert!(answer.ends_with("\r\n\r\n42"), "{answer}");
//!
//! stop.send(()).ok();
//! tokio::time::timeout(Duration::from_secs(10), server).await???;
//! ticker.abort();
//! Ok(())
//! }
//! ```
//!
//! The same stack serves under hyper with no glue:
//! `hyper_util::server::conn::auto::Builder::serve_connection(io,
//! TowerToHyperService::new(server_stack.service(handler)))`. `axum::serve` takes a `Router`
//! (its services must answer axum's own `Response`); a bare service goes into one with
//! `Router::new().route_service(path, service)` or `fallback_service(service)`.
mod answer;
mod body;
mod future;
mod layer;
mod respond;
mod service;

pub use self::answer::{Answer, HttpAnswer};
pub use self::body::ResponseBody;
pub use self::future::{AnswerFuture, ResponseFuture};
pub use self::layer::ErrorToResponseLayer;
pub use self::respond::{OnError, error_response, error_status};
pub use self::service::{ErrorAnswer, ErrorToResponse};
