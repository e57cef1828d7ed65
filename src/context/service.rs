use std::task::{Context, Poll};

use tower_service::Service;

use super::{HasCriticality, RequestContext, ScopedFuture};
use crate::timeout::HasDeadline;

/// A service that runs each call inside its request's scope.
///
/// Made by [`ScopeLayer`](super::ScopeLayer); see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Scope<S> {
    inner: S,
}

impl<S> Scope<S> {
    pub(super) fn new(inner: S) -> Self {
        Scope { inner }
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

impl<S, Req> Service<Req> for Scope<S>
where
    S: Service<Req>,
    Req: HasDeadline + HasCriticality,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ScopedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let context = RequestContext::of(&req);
        // Work a service does in `call` itself (some start the handler there) sees the scope too.
        let fut = context.sync_scope(|| self.inner.call(req));
        context.scope(fut)
    }
}
