use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{Hold, Limiter, ResponseFuture};
use crate::error::BoxError;

/// A service behind a [`BackpressureLayer`](super::BackpressureLayer). Clones share the limiter.
///
/// Always ready: admission is decided in `call`, and a refusal comes back from the response
/// future, so a caller never sees a false `Overloaded` from a readiness check (see the
/// [module docs](super)). The inner service is cloned per request and made ready only once the
/// request holds a slot.
#[derive(Debug)]
pub struct Backpressure<S, H> {
    inner: S,
    limiter: Limiter,
    _hold: PhantomData<fn() -> H>,
}

impl<S: Clone, H> Clone for Backpressure<S, H> {
    fn clone(&self) -> Self {
        Backpressure {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            _hold: PhantomData,
        }
    }
}

impl<S, H> Backpressure<S, H> {
    pub(super) fn new(inner: S, limiter: Limiter) -> Self {
        Backpressure {
            inner,
            limiter,
            _hold: PhantomData,
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
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

impl<S, H, Req> Service<Req> for Backpressure<S, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: Hold<S::Response>,
{
    type Response = H::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, H>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let admission = self.limiter.gate.acquire(|| None);
        ResponseFuture::new(admission, self.inner.clone(), request)
    }
}
