use std::fmt;

use http::Response;

use super::respond::error_answer;
use super::{OnError, ResponseBody};
use crate::error::BoxError;

/// How [`ErrorAnswer`](super::ErrorAnswer) turns an error into a response, and whom it tells:
/// the one thing that differs between an HTTP edge ([`HttpAnswer`], behind
/// [`ErrorToResponse`](super::ErrorToResponse)) and a gRPC edge (`GrpcAnswer`, behind
/// `ErrorToGrpc`). The readiness-error handling, the future and the body are shared.
///
/// It runs on the request's path for every error, refusals included: keep it cheap.
pub trait Answer {
    /// The response `error` is answered with; calls the user's hook, if any, on the way.
    fn answer<B>(&self, error: &BoxError) -> Response<ResponseBody<B>>;
}

/// The HTTP [`Answer`]: the error's status (429 or 503 with `Retry-After`, 504, 500), an empty
/// body unless the error's text is exposed, and the [`OnError`] hook `H`.
#[derive(Clone, Copy)]
pub struct HttpAnswer<H = ()> {
    expose_error_text: bool,
    on_error: H,
}

impl<H> HttpAnswer<H> {
    pub(crate) fn new(expose_error_text: bool, on_error: H) -> Self {
        HttpAnswer {
            expose_error_text,
            on_error,
        }
    }
}

// No `H: Debug` bound: the hook is usually a closure.
impl<H> fmt::Debug for HttpAnswer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAnswer")
            .field("expose_error_text", &self.expose_error_text)
            .finish_non_exhaustive()
    }
}

impl<H: OnError> Answer for HttpAnswer<H> {
    fn answer<B>(&self, error: &BoxError) -> Response<ResponseBody<B>> {
        let res = error_answer(error, self.expose_error_text);
        self.on_error.on_error(error, res.status());
        res
    }
}
