use std::fmt;
use std::task::{Context, Poll};

use http::Response;
use tower_service::Service;

use super::{ResponseFuture, client_code};
use crate::error::BoxError;
use crate::http::ResponseBody;

/// The service made by [`ClientRefusalLayer`](super::ClientRefusalLayer).
pub struct ClientRefusal<S> {
    inner: S,
    /// A refusal the inner `poll_ready` returned, which the next call answers with.
    ready_refusal: Option<BoxError>,
}

impl<S> ClientRefusal<S> {
    pub(super) fn new(inner: S) -> Self {
        ClientRefusal {
            inner,
            ready_refusal: None,
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

/// A clone starts without the original's pending refusal: it belongs to the one call the
/// original was readied for.
impl<S: Clone> Clone for ClientRefusal<S> {
    fn clone(&self) -> Self {
        ClientRefusal::new(self.inner.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for ClientRefusal<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRefusal")
            .field("inner", &self.inner)
            .field("ready_refusal", &self.ready_refusal)
            .finish()
    }
}

impl<S, Req, B> Service<Req> for ClientRefusal<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ready_refusal.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                let err = err.into();
                if client_code(&err).is_some() {
                    self.ready_refusal = Some(err);
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(err))
                }
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.ready_refusal.take() {
            Some(refusal) => ResponseFuture::refused(refusal),
            None => ResponseFuture::called(self.inner.call(request)),
        }
    }
}
