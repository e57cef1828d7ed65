use std::error::Error as StdError;

use http::{Response, StatusCode};

use super::ResponseBody;
use crate::error::{BoxError, find_overload, is_timeout};

/// The status a server answers an error with: a backstop refusal anywhere in the error's source
/// chain is its own status ([`Overloaded::http_status`](crate::Overloaded::http_status): 429 when
/// the client asks too much, 503 when the server is full); a timeout
/// ([`is_timeout`](crate::is_timeout): backstop's, tower's or tokio's `Elapsed`, an I/O
/// timeout) is 504 Gateway Timeout; anything else is 500 Internal Server Error.
///
/// ```
/// use backstop::http::error_status;
/// use backstop::{BoxError, OverloadReason, Overloaded};
///
/// let refusal: BoxError = Overloaded::new(OverloadReason::QueueFull).into();
/// assert_eq!(error_status(refusal.as_ref()), 503);
/// let timeout: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// assert_eq!(error_status(timeout.as_ref()), 504);
/// let other: BoxError = "connection reset".into();
/// assert_eq!(error_status(other.as_ref()), 500);
/// ```
pub fn error_status(err: &(dyn StdError + 'static)) -> StatusCode {
    if let Some(overload) = find_overload(err) {
        overload.http_status()
    } else if is_timeout(err) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The answer a server gives for `err`, for a handler whose own call failed: [`error_status`],
/// with `Retry-After` on a refusal (so a caller behind a refused call is told when to come
/// back), and an empty body.
///
/// ```
/// use backstop::http::error_response;
/// use backstop::{BoxError, OverloadReason, Overloaded};
///
/// let refusal: BoxError = Overloaded::new(OverloadReason::Throttled).into();
/// let res: http::Response<String> = error_response(refusal.as_ref());
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "1");
/// ```
pub fn error_response<B: Default>(err: &(dyn StdError + 'static)) -> Response<B> {
    match find_overload(err) {
        Some(overload) => overload.to_http_response(),
        None => {
            let mut res = Response::new(B::default());
            *res.status_mut() = error_status(err);
            res
        }
    }
}

/// The answer to `err`: [`error_status`], with `Retry-After` on a refusal, and an empty body
/// unless `expose_text` asks for the error's `Display` (a line of text).
pub(crate) fn error_answer<B>(err: &BoxError, expose_text: bool) -> Response<ResponseBody<B>> {
    let err = err.as_ref() as &(dyn StdError + 'static);
    let mut res = match find_overload(err) {
        // The same answer `overload_to_response` gives: status and `Retry-After`.
        Some(overload) => overload.to_http_response(),
        None => {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = error_status(err);
            res
        }
    };
    if expose_text {
        *res.body_mut() = ResponseBody::text(format!("{err}\n"));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    res
}

/// Called with every error [`ErrorToResponse`](super::ErrorToResponse) turns into an answer, and
/// the status it answers with: the place to log or count errors whose text the body no longer
/// carries.
///
/// Implemented for `()` (does nothing, the default) and for any
/// `Fn(&BoxError, StatusCode)`. It runs on the request's path, refusals included: under
/// overload it runs for every refused request, so keep it cheap (skip 429 and 503, which the
/// throttle's and queue's metrics already count, or sample).
pub trait OnError {
    /// Sees one error and the status it is answered with.
    fn on_error(&self, error: &BoxError, status: StatusCode);
}

impl OnError for () {
    fn on_error(&self, _error: &BoxError, _status: StatusCode) {}
}

impl<F> OnError for F
where
    F: Fn(&BoxError, StatusCode),
{
    fn on_error(&self, error: &BoxError, status: StatusCode) {
        self(error, status)
    }
}
