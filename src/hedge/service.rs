use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::layer::{DelayRule, Shared};
use super::{HedgeBudget, Hedgeable, ResponseFuture};
use crate::classify::Classify;
use crate::error::BoxError;

/// Sends copies of a late request (one by default, up to
/// [`max_copies`](super::HedgeLayerBuilder::max_copies)) and answers with the first success;
/// made by [`HedgeLayer`](super::HedgeLayer).
///
/// The inner service must be [`Clone`] (each further copy goes through a clone, which is made
/// ready when the copy is due) and so must the request.
pub struct HedgeService<S, C, B, P> {
    inner: S,
    shared: Arc<Shared<C, B, P>>,
}

impl<S: Clone, C, B, P> Clone for HedgeService<S, C, B, P> {
    fn clone(&self) -> Self {
        HedgeService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C, B, P> std::fmt::Debug for HedgeService<S, C, B, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeService")
            .field("inner", &self.inner)
            .field("tracker", &self.shared.tracker)
            .finish()
    }
}

impl<S, C, B, P> HedgeService<S, C, B, P> {
    pub(super) fn new(inner: S, shared: Arc<Shared<C, B, P>>) -> Self {
        HedgeService { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, C, B, P> Service<Req> for HedgeService<S, C, B, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, BoxError>,
    B: HedgeBudget,
    P: Hedgeable<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, S::Response, C, B, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let started = Instant::now();
        shared.budget.deposit();
        let delay = if shared.hedgeable.allows(&req) {
            shared.delay()
        } else {
            None
        };
        let Some(delay) = delay else {
            let first = self.inner.call(req);
            return ResponseFuture::single(first, started, shared);
        };
        // No copy at or after the deadline: the request's own, else the handler's scope.
        let deadline = shared
            .hedgeable
            .deadline(&req)
            .or_else(crate::context::current_deadline)
            .map(|d| d.instant());
        if deadline.is_some_and(|at| started + delay >= at) {
            // The duplicate would be due when the caller no longer waits: not even prepared.
            let first = self.inner.call(req);
            return ResponseFuture::single(first, started, shared);
        }
        // The first copy goes out unmarked (no `HedgeCopy` means copy 0): marking it would cost
        // an allocation on every request, where only the rare duplicates need one.
        let duplicate = req.clone();
        // Further copies go through clones of the service, made ready only when they are due;
        // the first copy uses `self.inner`, which the caller made ready.
        let spare = self.inner.clone();
        let first = self.inner.call(req);
        let constant_work = matches!(shared.rule, DelayRule::Now);
        ResponseFuture::hedged(
            first,
            started,
            spare,
            duplicate,
            (!constant_work).then_some(delay),
            deadline,
            shared,
        )
    }
}
