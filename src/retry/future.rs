use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::layer::{MarkRetried, Shared};
use super::marker::{AlreadyRetried, RetriedMarker, RetryRequest};
use super::{Budget, RetryKind};
use crate::classify::{Classify, Outcome};
use crate::error::{BoxError, is_timeout};
use crate::timeout::Deadline;

/// The response future of [`Retry`](super::Retry).
///
/// Cancel-safe: dropping it during the delay before the retry cancels the retry and refunds the
/// token it had withdrawn, so a retry that was never sent costs the budget nothing.
///
/// `F` and `Res` are the inner service's future and response, type parameters of their own
/// rather than `S::Future` and `S::Response` so that a task holding this future is `Send`
/// whatever the inner error type (a field typed by a projection through `S` trips
/// rust-lang/rust#64552 for a `BoxError`; tests/spawn_send.rs).
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S, F, Req, Res, B, C>
where
    B: Budget,
{
    shared: Arc<Shared<B, C>>,
    #[pin]
    state: State<F, S, Req, Res>,
    /// The price of a retry withdrawn from the budget but not sent yet.
    unsent: Option<RetryKind>,
}

#[pin_project(project = Projected)]
enum State<F, S, Req, Res> {
    /// The first attempt is running; `backup` is what a retry needs, when one is possible.
    First {
        #[pin]
        attempt: F,
        backup: Option<(S, Req)>,
    },
    /// The retry is paid for: waiting out the delay (`sleep`, none for a zero delay), then for
    /// the inner service to be ready. `failed` is the first attempt's answer, passed up if the
    /// deadline comes too close before the retry can be sent.
    Waiting {
        #[pin]
        sleep: Option<Sleep>,
        service: S,
        request: Option<Req>,
        failed: Option<Result<Res, BoxError>>,
    },
    /// The retry is running.
    Second {
        #[pin]
        attempt: F,
    },
}

impl<S, F, Req, Res, B, C> ResponseFuture<S, F, Req, Res, B, C>
where
    B: Budget,
{
    pub(super) fn new(first: F, backup: Option<(S, Req)>, shared: Arc<Shared<B, C>>) -> Self {
        ResponseFuture {
            shared,
            state: State::First {
                attempt: first,
                backup,
            },
            unsent: None,
        }
    }
}

impl<S, F, Req, B, C> Future for ResponseFuture<S, F, Req, S::Response, B, C>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    Req: RetryRequest,
    B: Budget,
    C: Classify<S::Response, BoxError> + RetriedMarker<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            match this.state.as_mut().project() {
                Projected::First { attempt, backup } => {
                    let result = ready!(attempt.poll(cx)).map_err(Into::into);
                    let outcome = shared.classifier.classify(result.as_ref());
                    match outcome {
                        Outcome::Success => {
                            shared.budget.deposit();
                            return Poll::Ready(result);
                        }
                        Outcome::Retryable => shared.budget.on_failure(),
                        Outcome::Overload(_) | Outcome::Final => return Poll::Ready(result),
                    }
                    let pushback = shared.classifier.pushback(result.as_ref());
                    let retry = backup
                        .take()
                        .filter(|_| !(shared.honour_marker && is_marked(shared, &result)))
                        .and_then(|(service, request)| {
                            let delay = plan_retry(shared, &request, &result, pushback)?;
                            Some((service, request, delay))
                        });
                    let Some((service, request, (kind, delay))) = retry else {
                        return Poll::Ready(pass_up(shared, result, false));
                    };
                    *this.unsent = Some(kind);
                    let sleep = (!delay.is_zero()).then(|| sleep_until(Instant::now() + delay));
                    this.state.set(State::Waiting {
                        sleep,
                        service,
                        request: Some(request),
                        failed: Some(result),
                    });
                }
                Projected::Waiting {
                    mut sleep,
                    service,
                    request,
                    failed,
                } => {
                    if let Some(delay) = sleep.as_mut().as_pin_mut() {
                        ready!(delay.poll(cx));
                        sleep.set(None);
                    }
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        if let Some(kind) = this.unsent.take() {
                            shared.budget.refund(kind);
                        }
                        return Poll::Ready(Err(e.into()));
                    }
                    let request_ref = request.as_ref().expect("the retry is sent once");
                    if !enough_time_left(shared, deadline_of(request_ref)) {
                        // The wait for readiness ate the time: pass the first failure up, as if
                        // there had been no retry, and give the token back.
                        if let Some(kind) = this.unsent.take() {
                            shared.budget.refund(kind);
                        }
                        let failed = failed.take().expect("the first answer is passed up once");
                        return Poll::Ready(pass_up(shared, failed, false));
                    }
                    let mut request = request.take().expect("the retry is sent once");
                    request.set_attempt(2);
                    let attempt = service.call(request);
                    // Sent: the token is spent.
                    *this.unsent = None;
                    this.state.set(State::Second { attempt });
                }
                Projected::Second { attempt } => {
                    let result = ready!(attempt.poll(cx)).map_err(Into::into);
                    return Poll::Ready(match shared.classifier.classify(result.as_ref()) {
                        Outcome::Success => {
                            shared.budget.deposit();
                            result
                        }
                        Outcome::Retryable => {
                            shared.budget.on_failure();
                            pass_up(shared, result, true)
                        }
                        _ => result,
                    });
                }
            }
        }
    }
}

/// Decides whether a retryable failure is retried, and pays for it: the kind of retry and the
/// delay before it, or `None` when the deadline or the budget forbids it. The delay is at least
/// the server's `pushback`; a pushback that leaves less than `min_time_left` before the deadline
/// means no retry.
fn plan_retry<Req: RetryRequest, Res, B: Budget, C>(
    shared: &Shared<B, C>,
    request: &Req,
    result: &Result<Res, BoxError>,
    pushback: Option<Duration>,
) -> Option<(RetryKind, Duration)> {
    let deadline = deadline_of(request);
    if !request.can_replay() || !enough_time_left(shared, deadline) {
        return None;
    }
    let limit = deadline.map_or(Duration::MAX, |d| {
        d.remaining().saturating_sub(shared.min_time_left)
    });
    let pushback = pushback.unwrap_or(Duration::ZERO);
    if pushback > limit || pushback > crate::error::FOREVER {
        return None;
    }
    let kind = match result {
        Err(e) if is_timeout(e.as_ref()) => RetryKind::AfterTimeout,
        _ => RetryKind::AfterError,
    };
    // Withdrawn before the delay, so concurrent failures cannot all pass the check and then
    // all retry; refunded if the retry is cancelled before it is sent.
    if !shared.budget.try_withdraw(kind) {
        return None;
    }
    Some((kind, shared.delay(limit).max(pushback)))
}

/// The request's deadline, else the scope's: a timeout above leaves an `http::Request` without
/// one untouched and hands its deadline down in the scope, which the retry future is polled in.
fn deadline_of<Req: RetryRequest>(request: &Req) -> Option<Deadline> {
    crate::context::effective_deadline(request)
}

/// True when there is no deadline, or at least `min_time_left` (and more than zero) before it.
fn enough_time_left<B, C>(shared: &Shared<B, C>, deadline: Option<Deadline>) -> bool {
    deadline.is_none_or(|d| {
        let left = d.remaining();
        !left.is_zero() && left >= shared.min_time_left
    })
}

fn is_marked<Res, B, C: RetriedMarker<Res>>(
    shared: &Shared<B, C>,
    result: &Result<Res, BoxError>,
) -> bool {
    match result {
        Ok(res) => shared.classifier.is_retried(res),
        Err(e) => AlreadyRetried::is_marked(e.as_ref()),
    }
}

/// A retryable failure leaving the layer: marked "decided below" as the layer's
/// [`MarkRetried`] says (`retried`: this layer sent the retry), and reported to the server scope
/// of [`PropagateRetried`](super::PropagateRetried), if any, when it leaves marked, so the
/// server's own answer carries the mark to its callers.
fn pass_up<Res, B, C: RetriedMarker<Res>>(
    shared: &Shared<B, C>,
    result: Result<Res, BoxError>,
    retried: bool,
) -> Result<Res, BoxError> {
    let mark_it = match shared.mark {
        MarkRetried::Never => false,
        MarkRetried::AfterRetry => retried,
        MarkRetried::Always => true,
    };
    let result = if mark_it {
        mark(shared, result)
    } else {
        result
    };
    if mark_it || is_marked(shared, &result) {
        super::propagate::note_decided();
    }
    result
}

fn mark<Res, B, C: RetriedMarker<Res>>(
    shared: &Shared<B, C>,
    result: Result<Res, BoxError>,
) -> Result<Res, BoxError> {
    match result {
        Ok(mut res) => {
            shared.classifier.mark_retried(&mut res);
            Ok(res)
        }
        Err(e) if AlreadyRetried::is_marked(e.as_ref()) => Err(e),
        Err(e) => Err(Box::new(AlreadyRetried::new(e))),
    }
}

#[pinned_drop]
impl<S, F, Req, Res, B, C> PinnedDrop for ResponseFuture<S, F, Req, Res, B, C>
where
    B: Budget,
{
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(kind) = this.unsent.take() {
            this.shared.budget.refund(kind);
        }
    }
}

impl<S, F, Req, Res, B, C> fmt::Debug for ResponseFuture<S, F, Req, Res, B, C>
where
    B: Budget,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::First { backup, .. } => {
                if backup.is_some() {
                    "first attempt (retry possible)"
                } else {
                    "first attempt"
                }
            }
            State::Waiting { .. } => "waiting to retry",
            State::Second { .. } => "retry",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("unsent", &self.unsent)
            .finish()
    }
}
