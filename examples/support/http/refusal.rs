//! Turning a server-side error into an HTTP answer.
//!
//! Refusals use the crate's own helper, [`Overloaded::to_http_response`](backstop::Overloaded):
//! 429 when the client asks too much (`Throttled`, `RateLimited`), 503 when the server is full
//! (queue full, shed, admission denied), both with `Retry-After` in whole seconds, at least 1.

use axum::body::Body;
use backstop::{BoxError, find_overload, is_timeout};
use http::{Response, StatusCode};

/// A server-side error as an HTTP response: a refusal is a 429 or 503 with `Retry-After`; the
/// caller's deadline running out on the server is a 504 (no retry can help it); anything else
/// is a 500.
pub fn error_response(err: &BoxError) -> Response<Body> {
    if let Some(overload) = find_overload(err.as_ref()) {
        return overload.to_http_response();
    }
    let status = if is_timeout(err.as_ref()) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let mut res = Response::new(Body::from(format!("{err}\n")));
    *res.status_mut() = status;
    res
}
