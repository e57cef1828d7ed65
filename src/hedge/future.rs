use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep, sleep};
use tower_service::Service;

use super::HedgeBudget;
use super::layer::{DelayRule, Shared};
use crate::classify::{Classify, Outcome};
use crate::error::BoxError;

/// The duplicate, waiting for its delay and then for its service to be ready.
struct Spare<S, Req> {
    service: S,
    request: Req,
    /// True once the budget paid for it (so a duplicate that is never sent gets refunded).
    paid: bool,
}

/// The response future of [`HedgeService`](super::HedgeService).
///
/// Dropping it drops both copies, which cancels them, and refunds a duplicate that was paid for
/// but not sent yet.
///
/// `F` and `Res` are the inner service's future and response, type parameters of their own
/// rather than `S::Future` and `S::Response` so that a task holding this future is `Send`
/// whatever the inner error type (a field typed by a projection through `S` trips
/// rust-lang/rust#64552 for a `BoxError`; tests/spawn_send.rs).
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S, F, Req, Res, C, B, P>
where
    B: HedgeBudget,
{
    #[pin]
    first: Option<F>,
    #[pin]
    second: Option<F>,
    /// The hedge delay; `None` once it fired, or when there is none (constant work).
    #[pin]
    timer: Option<Sleep>,
    spare: Option<Spare<S, Req>>,
    /// The first non-success outcome, kept while the other copy may still succeed.
    failure: Option<Result<Res, BoxError>>,
    started: Instant,
    /// The first copy's latency is already in the tracker (as censored, when its duplicate was
    /// refused): it must not be recorded again when it completes.
    recorded: bool,
    shared: Arc<Shared<C, B, P>>,
}

impl<S, F, Req, Res, C, B, P> ResponseFuture<S, F, Req, Res, C, B, P>
where
    B: HedgeBudget,
{
    pub(super) fn single(first: F, started: Instant, shared: Arc<Shared<C, B, P>>) -> Self {
        ResponseFuture {
            first: Some(first),
            second: None,
            timer: None,
            spare: None,
            failure: None,
            started,
            recorded: false,
            shared,
        }
    }

    /// `delay: None` sends the duplicate at the first poll, without asking the budget.
    pub(super) fn hedged(
        first: F,
        started: Instant,
        service: S,
        request: Req,
        delay: Option<Duration>,
        shared: Arc<Shared<C, B, P>>,
    ) -> Self {
        ResponseFuture {
            first: Some(first),
            second: None,
            timer: delay.map(sleep),
            spare: Some(Spare {
                service,
                request,
                paid: delay.is_none(),
            }),
            failure: None,
            started,
            recorded: false,
            shared,
        }
    }
}

impl<S, F, Req, C, B, P> Future for ResponseFuture<S, F, Req, S::Response, C, B, P>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    B: HedgeBudget,
    P: super::Hedgeable<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let constant_work = matches!(shared.rule, DelayRule::Now);
        loop {
            // The first copy.
            if let Some(first) = this.first.as_mut().as_pin_mut()
                && let Poll::Ready(result) = first.poll(cx)
            {
                this.first.set(None);
                let result = result.map_err(Into::into);
                let outcome = shared.classifier.classify(result.as_ref());
                // An overload answer is a refusal, not a latency of the service; it costs the
                // budget a hedge.
                if outcome.is_overload() {
                    shared.budget.overloaded();
                } else if !*this.recorded {
                    shared.tracker.record(this.started.elapsed());
                }
                if this.timer.is_some() && !outcome.is_overload() {
                    // Answered before its delay: on time. (A refusal says nothing of how
                    // slow the service is; it costs the budget instead.)
                    shared.late.observe(false);
                }
                if outcome == Outcome::Success || this.second.is_none() {
                    // A success wins. A failure with no duplicate in flight is returned as it
                    // is: no duplicate after an overload, and a failure before the delay is the
                    // retry layer's business. A paid-for duplicate never sent is refunded.
                    this.second.set(None);
                    give_back(this.spare.take(), &shared.budget, constant_work);
                    if outcome == Outcome::Success {
                        return Poll::Ready(result);
                    }
                    // Both copies failed (or only one was ever sent): the first failure.
                    return Poll::Ready(this.failure.take().unwrap_or(result));
                }
                // The duplicate is still running and may yet succeed.
                this.failure.get_or_insert(result);
            }

            // The duplicate.
            if let Some(second) = this.second.as_mut().as_pin_mut()
                && let Poll::Ready(result) = second.poll(cx)
            {
                this.second.set(None);
                let result = result.map_err(Into::into);
                let outcome = shared.classifier.classify(result.as_ref());
                if outcome.is_overload() {
                    shared.budget.overloaded();
                }
                if outcome == Outcome::Success {
                    if this.first.is_some() && !*this.recorded {
                        // The first copy is cancelled: all we know is that it is slower than
                        // this (see `record_at_least`).
                        shared.tracker.record_at_least(this.started.elapsed());
                        this.first.set(None);
                    }
                    shared.series.won.increment(1);
                    return Poll::Ready(result);
                }
                if this.first.is_none() {
                    // Both failed: the first failure wins.
                    return Poll::Ready(this.failure.take().unwrap_or(result));
                }
                this.failure.get_or_insert(result);
            }

            // The delay.
            if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer.set(None);
                // A body that can no longer be replayed (it outgrew its replay limit while the
                // first copy streamed it) ends the hedge: nothing to pay, nothing to refund.
                if this
                    .spare
                    .as_ref()
                    .is_some_and(|spare| !shared.hedgeable.allows(&spare.request))
                {
                    *this.spare = None;
                }
                if let Some(spare) = this.spare.as_mut() {
                    // Late: a duplicate only while few others are (slowness is then this
                    // request's own, not everyone's), and the budget pays. The share is asked
                    // first, so standing down costs no token.
                    let calm = shared.late.observe(true) <= shared.max_late_share;
                    if !calm {
                        shared.late.stand_down();
                        shared.series.stood_down.increment(1);
                    }
                    if calm && shared.budget.try_withdraw() {
                        spare.paid = true;
                    } else {
                        if calm {
                            shared.series.denied.increment(1);
                        }
                        *this.spare = None;
                        // Tell the tracker now that this copy is late, rather than when it
                        // completes, maybe much later: while the delay is too short (at start-up,
                        // when only the fast copies have completed yet) the refused copies are
                        // the slow ones, and leaving them out until they complete keeps the
                        // delay short and the budget drained. What is known now is that the copy
                        // is running after the delay: a censored latency, and the only one kept
                        // for this request (recording its completion too would count it twice).
                        if !constant_work {
                            shared.tracker.record_at_least(this.started.elapsed());
                            *this.recorded = true;
                        }
                    }
                }
            }

            // The duplicate's service, once the delay is over.
            let Some(spare) = this.spare.as_mut() else {
                return Poll::Pending;
            };
            match spare.service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The spare service is broken: carry on with the first copy alone.
                    give_back(this.spare.take(), &shared.budget, constant_work);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    let Spare {
                        mut service,
                        request,
                        ..
                    } = this.spare.take().expect("checked above");
                    this.second.set(Some(service.call(request)));
                    shared.series.sent.increment(1);
                    if let Some(delay) = shared.delay() {
                        shared.series.delay.set(delay.as_secs_f64());
                    }
                    // Poll the new copy once, so it can wake us.
                }
            }
        }
    }
}

#[pinned_drop]
impl<S, F, Req, Res, C, B, P> PinnedDrop for ResponseFuture<S, F, Req, Res, C, B, P>
where
    B: HedgeBudget,
{
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(spare) = this.spare.take()
            && spare.paid
            && !matches!(this.shared.rule, DelayRule::Now)
        {
            this.shared.budget.refund();
        }
    }
}

fn give_back<S, Req, B: HedgeBudget>(spare: Option<Spare<S, Req>>, budget: &B, constant: bool) {
    if let Some(spare) = spare
        && spare.paid
        && !constant
    {
        budget.refund();
    }
}
