use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{AdaptiveQueue, ResponseFuture};
use crate::backpressure::Hold;
use crate::context::{CriticalityOf, SameCriticality};
use crate::error::BoxError;
use crate::timeout::DeadlineOf;

/// A service behind a [`LifoQueueLayer`](super::LifoQueueLayer). Clones share the queue.
///
/// Always ready: admission is decided in `call` and refusals come back from the response future
/// (see the [module docs](super) on false overloads). The inner service is cloned per request and
/// made ready only once the request holds a slot.
#[derive(Debug)]
pub struct LifoQueue<S, H, D, K = SameCriticality> {
    inner: S,
    queue: AdaptiveQueue,
    deadlines: D,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl<S: Clone, H, D: Clone, K: Clone> Clone for LifoQueue<S, H, D, K> {
    fn clone(&self) -> Self {
        LifoQueue {
            inner: self.inner.clone(),
            queue: self.queue.clone(),
            deadlines: self.deadlines.clone(),
            criticality: self.criticality.clone(),
            _hold: PhantomData,
        }
    }
}

impl<S, H, D, K> LifoQueue<S, H, D, K> {
    pub(super) fn new(inner: S, queue: AdaptiveQueue, deadlines: D, criticality: K) -> Self {
        LifoQueue {
            inner,
            queue,
            deadlines,
            criticality,
            _hold: PhantomData,
        }
    }

    /// The shared queue.
    pub fn queue(&self) -> &AdaptiveQueue {
        &self.queue
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

impl<S, H, D, K, Req> Service<Req> for LifoQueue<S, H, D, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: Hold<S::Response>,
    D: DeadlineOf<Req>,
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
        let admission = self
            .queue
            .gate
            .acquire_at(|| self.deadlines.deadline_of(&request), level);
        ResponseFuture::new(admission, self.inner.clone(), request)
    }
}
