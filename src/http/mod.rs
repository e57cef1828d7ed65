//! How the primitives meet HTTP (feature `http`): what a server stack answers, and what a
//! client stack needs to send a request twice.
//!
//! The primitives (`timeout`, `retry`, `throttle`, ...) know no protocol: they read requests
//! through small traits and responses through [`Classify`](crate::classify::Classify). This
//! module is the HTTP edge, as tower-http is to tower:
//!
//! - [`ErrorToResponseLayer`] ([`error_to_response`]), outermost on a server: every refusal
//!   becomes 429 or 503 with `Retry-After`, a passed deadline 504, anything else 500, and the
//!   stack's error becomes `Infallible`, so `axum::Router::layer` and hyper take it as it is;
//! - [`overload_to_response`] and [`Overloaded::to_http_response`](crate::Overloaded::to_http_response):
//!   any one refusal as that answer, for a handler or a layer of your own;
//! - [`ReplayBodyLayer`] ([`replay`]), above the retry and hedge layers on a client: streamed
//!   request bodies (`hyper::body::Incoming`, a proxied body) can be sent twice, up to a limit.
//!
//! Deadlines travel in headers through [`timeout::headers`](crate::timeout::headers), and the
//! HTTP meaning of a status is [`HttpClassifier`](crate::classify::HttpClassifier)'s, which every
//! layer's default classifier applies to an `http::Response`.

pub mod error_to_response;
mod overload;
pub mod replay;

pub use self::error_to_response::{
    ErrorToResponse, ErrorToResponseLayer, OnError, ResponseBody, ResponseFuture, error_response,
    error_status,
};
pub use self::overload::{DEFAULT_RETRY_AFTER, overload_to_response};
pub use self::replay::{ReplayBody, ReplayBodyLayer};
