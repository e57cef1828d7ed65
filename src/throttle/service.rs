use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::key::ClientKey;
use super::layer::Policy;
use crate::error::BoxError;

/// The service made by [`ThrottleLayer`](super::ThrottleLayer): refuses throttled clients at
/// once, before the inner service sees the request.
pub struct Throttle<S, K> {
    inner: S,
    policy: Arc<Policy<K>>,
}

impl<S, K> Throttle<S, K> {
    pub(super) fn new(inner: S, policy: Arc<Policy<K>>) -> Self {
        Throttle { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, K> Clone for Throttle<S, K> {
    fn clone(&self) -> Self {
        Throttle {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Throttle<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, K, Req> Service<Req> for Throttle<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: ClientKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.policy.decide(&req) {
            Ok(()) => ResponseFuture::admitted(self.inner.call(req)),
            Err(refusal) => ResponseFuture::refused(refusal),
        }
    }
}
