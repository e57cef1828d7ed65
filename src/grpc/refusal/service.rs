use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use http::Response;
use tower_service::Service;

use super::{OnGrpcError, ResponseFuture};
use crate::error::BoxError;
use crate::http::ResponseBody;

/// A service whose errors become trailers-only gRPC answers; made by
/// [`ErrorToGrpcLayer`](super::ErrorToGrpcLayer), see the [module docs](super).
///
/// Its error type is `Infallible`: every request gets exactly one answer. An error from the
/// inner service's `poll_ready` is kept and answers the next call, so readiness never fails.
pub struct ErrorToGrpc<S, H = ()> {
    inner: S,
    on_error: H,
    ready_error: Option<BoxError>,
}

impl<S, H> ErrorToGrpc<S, H> {
    pub(crate) fn new(inner: S, on_error: H) -> Self {
        ErrorToGrpc {
            inner,
            on_error,
            ready_error: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A clone starts without the original's pending readiness error: that error belongs to the
/// one call the original was readied for.
impl<S: Clone, H: Clone> Clone for ErrorToGrpc<S, H> {
    fn clone(&self) -> Self {
        ErrorToGrpc::new(self.inner.clone(), self.on_error.clone())
    }
}

impl<S: fmt::Debug, H> fmt::Debug for ErrorToGrpc<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorToGrpc")
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error)
            .finish_non_exhaustive()
    }
}

impl<S, H, Req, B> Service<Req> for ErrorToGrpc<S, H>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    H: OnGrpcError + Clone,
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
            Some(err) => ResponseFuture::failed(err, hook),
            None => ResponseFuture::called(self.inner.call(request), hook),
        }
    }
}
