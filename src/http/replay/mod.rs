//! Request bodies that can be sent twice, so streamed requests can be retried and hedged.
//!
//! [`RetryLayer`](crate::retry::RetryLayer) and [`HedgeLayer`](crate::hedge::HedgeLayer) send a
//! request more than once, so they need `Clone` requests, and most real bodies are streams that
//! cannot be cloned (`hyper::body::Incoming`, a proxied body, tonic's body). [`ReplayBodyLayer`]
//! wraps the body of each request in a [`ReplayBody`]: a cheap `Clone` that keeps what the first
//! attempt has sent, up to a limit (default 64 KiB, as Linkerd's proxy does), and plays it again
//! for the next copy, which then carries on reading the original stream where the first left off.
//!
//! When the body outgrows the limit, what was kept is dropped and the request is simply not
//! retried or hedged any more (the retry and hedge layers ask
//! [`RetryRequest::can_replay`](crate::retry::RetryRequest::can_replay) first): the first
//! attempt's answer goes back as it is. So is a body that failed mid-stream: its error goes up
//! once and is never replayed. Each such request is counted in
//! `backstop_replay_abandoned_total{name, reason}` (`too_large` or `body_error`); it is never an
//! error of its own.
//!
//! Two copies of a hedged request may read the body at the same time: whichever is ahead pulls
//! from the original stream and keeps the chunk for the other. If the body outgrows the limit
//! while a copy is behind, that copy cannot be completed and fails with [`NotReplayable`]; the
//! other copy carries the request (the hedge layer waits for it).
//!
//! # Example
//! ```
//! use backstop::http::ReplayBodyLayer;
//! use backstop::retry::{RetryBudget, RetryLayer};
//! use backstop::classify::HttpClassifier;
//! use backstop::retry::Idempotent;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, StreamBody};
//! use http_body::Frame;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let server = {
//!     let calls = calls.clone();
//!     tower::service_fn(move |req: http::Request<backstop::http::ReplayBody<_>>| {
//!         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!         async move {
//!             let body = req.into_body().collect().await?.to_bytes();
//!             // The first attempt fails after reading the whole body; the retry gets it again.
//!             let status = if first { 503 } else { 200 };
//!             let res = http::Response::builder().status(status).body(body)?;
//!             Ok::<_, backstop::BoxError>(res)
//!         }
//!     })
//! };
//! let budget = RetryBudget::builder("upload").initial_tokens(1.0).build()?;
//! let client = ServiceBuilder::new()
//!     .layer(ReplayBodyLayer::new("upload"))
//!     .layer(RetryLayer::builder(budget).classifier(HttpClassifier).build()?)
//!     .service(server);
//!
//! // A streamed body: not `Clone`.
//! let chunks = futures::stream::iter(["hello ", "world"].map(|c| {
//!     Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c.as_bytes())))
//! }));
//! let mut req = http::Request::post("/upload").body(StreamBody::new(chunks))?;
//! req.extensions_mut().insert(Idempotent);
//! let res = client.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.into_body(), "hello world");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(())
//! # }
//! ```

mod body;
mod layer;
mod service;

pub use self::body::{DEFAULT_REPLAY_LIMIT, NotReplayable, ReplayBody, ReplayHandle};
pub use self::layer::ReplayBodyLayer;
pub use self::service::ReplayBodyService;

/// False when the request's body is a [`ReplayBody`] that can no longer be replayed.
pub(crate) fn can_replay(extensions: &http::Extensions) -> bool {
    extensions
        .get::<ReplayHandle>()
        .is_none_or(ReplayHandle::is_replayable)
}
