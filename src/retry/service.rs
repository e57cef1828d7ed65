use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::layer::Shared;
use super::marker::{Idempotency, RetriedMarker, RetryRequest};
use super::{Budget, ResponseFuture};
use crate::classify::Classify;
use crate::error::BoxError;

/// A service that retries a failed request at most once, when its budget allows.
///
/// Made by [`RetryLayer`](super::RetryLayer); see the [module docs](super). Clones share the
/// layer's budget and configuration.
pub struct Retry<S, B, C, I> {
    inner: S,
    shared: Arc<Shared<B, C>>,
    idempotency: I,
}

impl<S, B, C, I> Retry<S, B, C, I> {
    pub(super) fn new(inner: S, shared: Arc<Shared<B, C>>, idempotency: I) -> Self {
        Retry {
            inner,
            shared,
            idempotency,
        }
    }

    /// The budget retries draw on.
    pub fn budget(&self) -> &B {
        &self.shared.budget
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

impl<S: Clone, B, C, I: Clone> Clone for Retry<S, B, C, I> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}

impl<S: fmt::Debug, B: fmt::Debug, C: fmt::Debug, I: fmt::Debug> fmt::Debug for Retry<S, B, C, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .field("idempotency", &self.idempotency)
            .finish()
    }
}

impl<S, Req, B, C, I> Service<Req> for Retry<S, B, C, I>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: RetryRequest + Clone,
    B: Budget,
    C: Classify<S::Response, BoxError> + RetriedMarker<S::Response>,
    I: Idempotency<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, S::Response, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The copy for the retry is made up front (the request is consumed by the first call),
        // and only when a retry could happen at all.
        let backup = (self.shared.max_retries > 0 && self.idempotency.allows(&req))
            .then(|| (self.inner.clone(), req.clone()));
        let first = self.inner.call(req);
        ResponseFuture::new(first, backup, self.shared.clone())
    }
}
