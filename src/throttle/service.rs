use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::key::ClientKey;
use super::layer::Policy;
use crate::context::{CriticalityOf, SameCriticality};
use crate::error::BoxError;

/// The service made by [`ThrottleLayer`](super::ThrottleLayer): refuses throttled clients at
/// once, before the inner service sees the request.
pub struct Throttle<S, K, C = SameCriticality> {
    inner: S,
    policy: Arc<Policy<K>>,
    criticality: C,
}

impl<S, K, C> Throttle<S, K, C> {
    pub(super) fn new(inner: S, policy: Arc<Policy<K>>, criticality: C) -> Self {
        Throttle {
            inner,
            policy,
            criticality,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, K, C: Clone> Clone for Throttle<S, K, C> {
    fn clone(&self) -> Self {
        Throttle {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            criticality: self.criticality.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for Throttle<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, K, C, Req> Service<Req> for Throttle<S, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: ClientKey<Req>,
    C: CriticalityOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The level is read only when it matters (someone is shed, or a refusal is counted):
        // an admitted request while nobody is shed pays no tag or scope lookup.
        let level = |req: &Req| self.criticality.criticality_of(req);
        match self.policy.decide(&req, level) {
            Ok(()) => ResponseFuture::admitted(self.inner.call(req)),
            Err(refusal) => ResponseFuture::refused(refusal),
        }
    }
}
