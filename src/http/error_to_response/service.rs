use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use http::Response;
use tower_service::Service;

use super::{Answer, AnswerFuture, HttpAnswer, ResponseBody};
use crate::error::BoxError;

/// A service whose errors become HTTP answers; made by
/// [`ErrorToResponseLayer`](super::ErrorToResponseLayer), see the [module docs](super).
///
/// Its error type is `Infallible`: every request gets exactly one answer, the inner service's
/// response or the error's status. An error from the inner service's `poll_ready` is kept and
/// answers the next call (the inner service is not called with it), so readiness never fails.
/// `H` is the [`OnError`](super::OnError) hook.
pub type ErrorToResponse<S, H = ()> = ErrorAnswer<S, HttpAnswer<H>>;

/// A service whose errors become the answers `A` gives ([`HttpAnswer`] for HTTP, `GrpcAnswer`
/// for gRPC): the mechanism behind [`ErrorToResponse`] and `ErrorToGrpc`.
///
/// Its error type is `Infallible`: every request gets exactly one answer, the inner service's
/// response or its error's. An error from the inner service's `poll_ready` is kept and answers
/// the next call (the inner service is not called with it), so readiness never fails.
pub struct ErrorAnswer<S, A> {
    inner: S,
    answer: A,
    /// The error the inner `poll_ready` failed with, which the next call answers with.
    ready_error: Option<BoxError>,
}

impl<S, A> ErrorAnswer<S, A> {
    pub(crate) fn new(inner: S, answer: A) -> Self {
        ErrorAnswer {
            inner,
            answer,
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
impl<S: Clone, A: Clone> Clone for ErrorAnswer<S, A> {
    fn clone(&self) -> Self {
        ErrorAnswer::new(self.inner.clone(), self.answer.clone())
    }
}

impl<S: fmt::Debug, A: fmt::Debug> fmt::Debug for ErrorAnswer<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorAnswer")
            .field("inner", &self.inner)
            .field("answer", &self.answer)
            .field("ready_error", &self.ready_error)
            .finish()
    }
}

impl<S, A, Req, B> Service<Req> for ErrorAnswer<S, A>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    A: Answer + Clone,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = AnswerFuture<S::Future, A>;

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
        let answer = self.answer.clone();
        match self.ready_error.take() {
            Some(err) => AnswerFuture::failed(err, answer),
            None => AnswerFuture::called(self.inner.call(request), answer),
        }
    }
}
