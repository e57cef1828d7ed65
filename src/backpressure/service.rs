use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{Hold, Limiter, ResponseFuture};
use crate::context::{CriticalityOf, SameCriticality};
use crate::error::BoxError;

/// A service behind a [`BackpressureLayer`](super::BackpressureLayer). Clones share the limiter.
///
/// Always ready: admission is decided in `call`, and a refusal comes back from the response
/// future, so a caller never sees a false `Overloaded` from a readiness check (see the
/// [module docs](super)). The inner service is cloned per request and made ready only once the
/// request holds a slot.
#[derive(Debug)]
pub struct Backpressure<S, H, K = SameCriticality> {
    inner: S,
    limiter: Limiter,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl<S: Clone, H, K: Clone> Clone for Backpressure<S, H, K> {
    fn clone(&self) -> Self {
        Backpressure {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            criticality: self.criticality.clone(),
            _hold: PhantomData,
        }
    }
}

impl<S, H, K> Backpressure<S, H, K> {
    pub(super) fn new(inner: S, limiter: Limiter, criticality: K) -> Self {
        Backpressure {
            inner,
            limiter,
            criticality,
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

impl<S, H, K, Req> Service<Req> for Backpressure<S, H, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: Hold<S::Response>,
    K: CriticalityOf<Req>,
{
    type Response = H::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, H>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let level = self.criticality.criticality_of(&request).index() as u8;
        let admission = self.limiter.gate.acquire_at(|| None, level);
        ResponseFuture::new(admission, self.inner.clone(), request)
    }
}
