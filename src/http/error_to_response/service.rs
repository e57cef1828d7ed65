use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use http::Response;
use tower_service::Service;

use super::{OnError, ResponseBody, ResponseFuture};
use crate::error::BoxError;

/// A service whose errors become HTTP answers; made by
/// [`ErrorToResponseLayer`](super::ErrorToResponseLayer), see the [module docs](super).
///
/// Its error type is `Infallible`: every request gets exactly one answer, the inner service's
/// response or the error's status. An error from the inner service's `poll_ready` is kept and
/// answers the next call (the inner service is not called with it), so readiness never fails.
pub struct ErrorToResponse<S, H = ()> {
    inner: S,
    expose_error_text: bool,
    on_error: H,
    /// The error the inner `poll_ready` failed with, which the next call answers with.
    ready_error: Option<BoxError>,
}

impl<S, H> ErrorToResponse<S, H> {
    pub(crate) fn new(inner: S, expose_error_text: bool, on_error: H) -> Self {
        ErrorToResponse {
            inner,
            expose_error_text,
            on_error,
            ready_error: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A clone starts without the original's pending readiness error: that error belongs to the
/// one call the original was readied for.
impl<S: Clone, H: Clone> Clone for ErrorToResponse<S, H> {
    fn clone(&self) -> Self {
        ErrorToResponse::new(
            self.inner.clone(),
            self.expose_error_text,
            self.on_error.clone(),
        )
    }
}

impl<S: fmt::Debug, H> fmt::Debug for ErrorToResponse<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorToResponse")
            .field("inner", &self.inner)
            .field("expose_error_text", &self.expose_error_text)
            .field("ready_error", &self.ready_error)
            .finish_non_exhaustive()
    }
}

impl<S, H, Req, B> Service<Req> for ErrorToResponse<S, H>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    H: OnError + Clone,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                self.ready_error = Some(err.into());
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let hook = self.on_error.clone();
        match self.ready_error.take() {
            Some(err) => ResponseFuture::failed(err, self.expose_error_text, hook),
            None => ResponseFuture::called(self.inner.call(request), self.expose_error_text, hook),
        }
    }
}
