use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep, sleep};
use tower_service::Service;

use super::layer::{DelayRule, MAX_COPIES, Shared};
use super::{HedgeBudget, HedgeCopy};
use crate::classify::{Classify, Outcome};
use crate::error::BoxError;

/// The next copy, waiting for its delay and then for its service to be ready.
struct Spare<S, Req> {
    service: S,
    request: Req,
    /// Which copy this is: 1 for the first duplicate.
    copy: usize,
    /// True once the budget paid for it (so a copy that is never sent gets refunded).
    paid: bool,
}

/// The response future of [`HedgeService`](super::HedgeService).
///
/// Dropping it drops every copy, which cancels them, and refunds a copy that was paid for but
/// not sent yet.
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
    /// Copy 0, the request itself.
    #[pin]
    first: Option<F>,
    /// Copy 1, the first duplicate: in place, so the default (one duplicate) allocates nothing.
    #[pin]
    second: Option<F>,
    /// Copies 2 and up (`max_copies` above 1): boxed, since few requests ever get there.
    further: [Option<Pin<Box<F>>>; MAX_COPIES - 1],
    /// The delay before the spare goes out; `None` once it fired, or when there is none
    /// (constant work).
    #[pin]
    timer: Option<Sleep>,
    spare: Option<Spare<S, Req>>,
    /// No copy goes out at or after this instant.
    deadline: Option<Instant>,
    /// The first non-success outcome, kept while another copy may still succeed.
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
            further: Default::default(),
            timer: None,
            spare: None,
            deadline: None,
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
        deadline: Option<Instant>,
        shared: Arc<Shared<C, B, P>>,
    ) -> Self {
        ResponseFuture {
            first: Some(first),
            second: None,
            further: Default::default(),
            timer: delay.map(sleep),
            spare: Some(Spare {
                service,
                request,
                copy: 1,
                paid: delay.is_none(),
            }),
            deadline,
            failure: None,
            started,
            recorded: false,
            shared,
        }
    }
}

impl<S, F, Req, C, B, P> Future for ResponseFuture<S, F, Req, S::Response, C, B, P>
where
    S: Service<Req, Future = F> + Clone,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    Req: Clone,
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
            // Every copy in flight, the first one first.
            for copy in 0..=MAX_COPIES {
                let polled = match copy {
                    0 => this.first.as_mut().as_pin_mut().map(|f| f.poll(cx)),
                    1 => this.second.as_mut().as_pin_mut().map(|f| f.poll(cx)),
                    n => this.further[n - 2].as_mut().map(|f| f.as_mut().poll(cx)),
                };
                let Some(Poll::Ready(result)) = polled else {
                    continue;
                };
                match copy {
                    0 => this.first.set(None),
                    1 => this.second.set(None),
                    n => this.further[n - 2] = None,
                }
                let result = result.map_err(Into::into);
                let outcome = shared.classifier.classify(result.as_ref());
                // An overload answer is a refusal, not a latency of the service; it costs the
                // budget a hedge.
                if outcome.is_overload() {
                    shared.budget.overloaded();
                }
                if copy == 0 && !outcome.is_overload() {
                    if !*this.recorded {
                        // One clock read: the latency's end also places it in its window.
                        let now = Instant::now();
                        let latency = now.saturating_duration_since(*this.started);
                        shared.tracker.record_at(latency, now);
                    }
                    if this.timer.is_some() && this.spare.as_ref().is_some_and(|s| s.copy == 1) {
                        // Answered before its delay: on time. (A refusal says nothing of how
                        // slow the service is; it costs the budget instead.)
                        shared.late.observe(false);
                    }
                }
                if outcome == Outcome::Success {
                    if copy != 0 {
                        if this.first.is_some() && !*this.recorded {
                            // The first copy is cancelled: all we know is that it is slower
                            // than this (see `record_at_least`).
                            let now = Instant::now();
                            let ran = now.saturating_duration_since(*this.started);
                            shared.tracker.record_at_least_at(ran, now);
                        }
                        shared.series.won.increment(1);
                    }
                    // The first success wins: every other copy is dropped, which cancels it,
                    // and a paid-for copy never sent is refunded.
                    this.first.set(None);
                    this.second.set(None);
                    this.further.iter_mut().for_each(|f| *f = None);
                    this.timer.set(None);
                    give_back(this.spare.take(), &shared.budget, constant_work);
                    return Poll::Ready(result);
                }
                // A failure sends no further copy: an overload answer must not turn into more
                // load, and any other failure is for the retry layer above to judge, with its
                // own budget. Copies in flight may still succeed; if none is left, the first
                // failure is returned.
                this.timer.set(None);
                give_back(this.spare.take(), &shared.budget, constant_work);
                this.failure.get_or_insert(result);
                let running = this.first.is_some()
                    || this.second.is_some()
                    || this.further.iter().any(Option::is_some);
                if !running {
                    return Poll::Ready(this.failure.take().expect("just stored"));
                }
            }

            // The delay before the next copy.
            if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer.set(None);
                // A body that can no longer be replayed (it outgrew its replay limit while the
                // first copy streamed it) ends the hedge, and so does the request's deadline: a
                // copy sent then answers no one. Nothing to pay, nothing to refund.
                if this.spare.as_ref().is_some_and(|spare| {
                    !shared.hedgeable.allows(&spare.request)
                        || this.deadline.is_some_and(|at| Instant::now() >= at)
                }) {
                    *this.spare = None;
                }
                if let Some(spare) = this.spare.as_mut() {
                    // Late: a copy only while few others are (slowness is then this request's
                    // own, not everyone's), and the budget pays. The share counts each request
                    // once, at its first delay; a further copy reads it as it stands, so a
                    // burst that pushed it over the bound stops every further copy too. The
                    // share is asked first, so standing down costs no token.
                    let share = if spare.copy == 1 {
                        shared.late.observe(true)
                    } else {
                        shared.late.get()
                    };
                    let calm = share <= shared.max_late_share;
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
                        let first_duplicate = spare.copy == 1;
                        *this.spare = None;
                        // Tell the tracker now that this copy is late, rather than when it
                        // completes, maybe much later: while the delay is too short (at start-up,
                        // when only the fast copies have completed yet) the refused copies are
                        // the slow ones, and leaving them out until they complete keeps the
                        // delay short and the budget drained. What is known now is that the copy
                        // is running after the delay: a censored latency, and the only one kept
                        // for this request (recording its completion too would count it twice).
                        // (A further copy refused leaves a duplicate running, which will most
                        // likely win and record the first copy then.)
                        if first_duplicate && !constant_work {
                            let now = Instant::now();
                            let ran = now.saturating_duration_since(*this.started);
                            shared.tracker.record_at_least_at(ran, now);
                            *this.recorded = true;
                        }
                    }
                }
            }

            // The next copy's service, once its delay is over.
            let Some(spare) = this.spare.as_mut() else {
                return Poll::Pending;
            };
            match spare.service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The spare service is broken: carry on with the copies in flight.
                    give_back(this.spare.take(), &shared.budget, constant_work);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    let Spare {
                        mut service,
                        mut request,
                        copy,
                        ..
                    } = this.spare.take().expect("checked above");
                    // The copy after this one, due one more delay from now, unless that is
                    // past the deadline.
                    if let Some(delay) = shared.delay_before(copy + 1)
                        && this.deadline.is_none_or(|at| Instant::now() + delay < at)
                    {
                        *this.spare = Some(Spare {
                            service: service.clone(),
                            request: request.clone(),
                            copy: copy + 1,
                            paid: false,
                        });
                        this.timer.set(Some(sleep(delay)));
                    }
                    shared.hedgeable.mark(&mut request, HedgeCopy(copy as u8));
                    let sent = service.call(request);
                    match copy {
                        1 => this.second.set(Some(sent)),
                        n => this.further[n - 2] = Some(Box::pin(sent)),
                    }
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
