//! Turning a backstop refusal into an HTTP answer.
//!
//! PRIVATE STAND-IN: the crate's own helper (429/503 + `Retry-After` from `Overloaded`) is being
//! written in `src/throttle` (branch `throttle`). Once it lands in main, replace
//! [`error_response`] with it; nothing else here depends on this file's details.

use std::time::Duration;

use axum::body::Body;
use backstop::{BoxError, OverloadReason, find_overload, is_timeout};
use http::{HeaderValue, Response, StatusCode, header::RETRY_AFTER};

/// When a refusal names no time to come back, callers are told this.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A server-side error as an HTTP response:
/// - a refusal aimed at this caller (whole-client throttle, rate limit) is a 429;
/// - a refusal because the server is full (queue full, shed, admission denied) is a 503;
/// - both carry `Retry-After` in whole seconds, rounded up, at least 1;
/// - the caller's deadline running out on the server is a 504 (no retry can help it);
/// - anything else is a 500.
pub fn error_response(err: &BoxError) -> Response<Body> {
    if let Some(overload) = find_overload(err.as_ref()) {
        let status = match overload.reason() {
            OverloadReason::Throttled | OverloadReason::RateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let after = overload.retry_after().unwrap_or(DEFAULT_RETRY_AFTER);
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        let mut res = Response::new(Body::from(format!("{overload}\n")));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return res;
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
