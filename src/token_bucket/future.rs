use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::TokenBucket;
use super::bucket::Waiter;
use crate::classify::{Classify, Outcome};
use crate::error::{BoxError, OverloadReason, Overloaded};

/// Waits for tokens from a [`TokenBucket`]; made by [`TokenBucket::acquire`].
///
/// Waiters are served first come, first served: only the head of the line looks at the bucket
/// (on a timer set for when its tokens will be there), the others sleep until they reach the
/// head. Dropping it takes nothing and leaves the line at once.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    bucket: TokenBucket,
    n: u32,
    state: AcquireState,
    timer: Option<Pin<Box<Sleep>>>,
}

enum AcquireState {
    Start,
    Queued(u64),
    Done,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("n", &self.n)
            .field("queued", &matches!(self.state, AcquireState::Queued(_)))
            .finish()
    }
}

impl Acquire {
    pub(super) fn new(bucket: TokenBucket, n: u32) -> Self {
        Acquire {
            bucket,
            n,
            state: AcquireState::Start,
            timer: None,
        }
    }

    fn too_large() -> Overloaded {
        Overloaded::new(OverloadReason::RateLimited)
    }

    /// Leaves the line (the entry `id`), waking the next head if this one was the head.
    fn leave(&mut self, id: u64) {
        let mut queue = self.bucket.queue();
        let Some(pos) = queue.entries.iter().position(|w| w.id == id) else {
            return;
        };
        queue.entries.remove(pos);
        self.bucket.inner.waiting.fetch_sub(1, Ordering::AcqRel);
        if pos == 0
            && let Some(next) = queue.entries.front()
            && let Some(waker) = &next.waker
        {
            waker.wake_by_ref();
        }
    }
}

impl Future for Acquire {
    type Output = Result<(), Overloaded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match this.state {
                AcquireState::Done => panic!("Acquire polled after completion"),
                AcquireState::Start => {
                    if !this.bucket.fits(this.n) && !this.bucket.is_unlimited() {
                        this.state = AcquireState::Done;
                        this.bucket.count(false);
                        return Poll::Ready(Err(Self::too_large()));
                    }
                    if this.bucket.try_acquire_quiet(this.n) {
                        this.state = AcquireState::Done;
                        this.bucket.count(true);
                        return Poll::Ready(Ok(()));
                    }
                    let mut queue = this.bucket.queue();
                    let id = queue.next_id;
                    queue.next_id += 1;
                    queue.entries.push_back(Waiter {
                        id,
                        waker: Some(cx.waker().clone()),
                    });
                    this.bucket.inner.waiting.fetch_add(1, Ordering::AcqRel);
                    this.state = AcquireState::Queued(id);
                }
                AcquireState::Queued(id) => {
                    let wait_until = {
                        let mut queue = this.bucket.queue();
                        let Some(pos) = queue.entries.iter().position(|w| w.id == id) else {
                            unreachable!("a queued waiter is in the line until it leaves");
                        };
                        // Keep the newest waker whatever happens next.
                        queue.entries[pos].waker = Some(cx.waker().clone());
                        if pos != 0 {
                            return Poll::Pending;
                        }
                        drop(queue);
                        if this.bucket.is_unlimited() || this.bucket.take(this.n) {
                            this.leave(id);
                            this.state = AcquireState::Done;
                            this.bucket.count(true);
                            return Poll::Ready(Ok(()));
                        }
                        if !this.bucket.fits(this.n) {
                            // The capacity shrank below what this waiter needs.
                            this.leave(id);
                            this.state = AcquireState::Done;
                            this.bucket.count(false);
                            return Poll::Ready(Err(Self::too_large()));
                        }
                        this.bucket.next_ready(this.n)
                    };
                    // At the head and short of tokens: sleep until they will be there. Any
                    // change of rate, capacity or tokens wakes this waiter early to look again.
                    let Some(at) = wait_until else {
                        this.timer = None;
                        return Poll::Pending;
                    };
                    match &mut this.timer {
                        Some(timer) if timer.deadline() == at => {}
                        Some(timer) => timer.as_mut().reset(at),
                        None => this.timer = Some(Box::pin(sleep_until(at))),
                    }
                    let timer = this.timer.as_mut().expect("set above");
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The timer fired: look again.
                    if Instant::now() < at {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let AcquireState::Queued(id) = self.state {
            self.leave(id);
        }
    }
}

/// The response future of [`TokenBucketService`](super::TokenBucketService): waits for a token
/// (or fails with `RateLimited`), runs the request, and feeds its outcome to the bucket's
/// adaptive rate.
///
/// `F` is the inner service's future, a type parameter of its own rather than `S::Future` so
/// that a task holding this future is `Send` whatever the inner error type (a field typed by a
/// projection through `S` trips rust-lang/rust#64552 for a `BoxError`; tests/spawn_send.rs).
#[pin_project]
pub struct ResponseFuture<S, F, Req, C> {
    #[pin]
    state: State<S, F, Req>,
    bucket: TokenBucket,
    classifier: C,
}

#[pin_project(project = StateProj)]
enum State<S, F, Req> {
    Waiting {
        acquire: Acquire,
        give_up: Option<Pin<Box<Sleep>>>,
        service: Option<S>,
        request: Option<Req>,
    },
    /// The token is ours: waiting for the inner service to be ready.
    Readying {
        service: S,
        request: Option<Req>,
        /// When the token was granted, the request's send time for the adaptive rate.
        sent_at: Instant,
    },
    Running {
        #[pin]
        future: F,
        /// When the request went on: tells the adaptive rate which congestion event an
        /// overload answer belongs to.
        sent_at: Instant,
    },
    Refused {
        error: Option<Overloaded>,
    },
    /// The answer went out; polling again is a bug in the caller.
    Done,
}

impl<S, F, Req, C> ResponseFuture<S, F, Req, C> {
    pub(super) fn running(bucket: TokenBucket, classifier: C, service: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Readying {
                service,
                request: Some(request),
                sent_at: Instant::now(),
            },
            bucket,
            classifier,
        }
    }

    pub(super) fn refused(bucket: TokenBucket, classifier: C, error: Overloaded) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            bucket,
            classifier,
        }
    }

    pub(super) fn waiting(
        bucket: TokenBucket,
        classifier: C,
        give_up: Option<Instant>,
        service: S,
        request: Req,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                acquire: bucket.acquire(1),
                give_up: give_up.map(|at| Box::pin(sleep_until(at))),
                service: Some(service),
                request: Some(request),
            },
            bucket,
            classifier,
        }
    }
}

impl<S, F, Req, C> Future for ResponseFuture<S, F, Req, C>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Waiting {
                    acquire,
                    give_up,
                    service,
                    request,
                } => {
                    match Pin::new(acquire).poll(cx) {
                        Poll::Ready(Ok(())) => {
                            let service = service.take().expect("polled after completion");
                            let request = request.take();
                            this.state.set(State::Readying {
                                service,
                                request,
                                sent_at: Instant::now(),
                            });
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Pending => {}
                    }
                    if let Some(timer) = give_up
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        // Out of patience (or past the deadline): leave the line, take nothing.
                        this.bucket.count(false);
                        let retry_after = this.bucket.time_until(1);
                        let mut err = Overloaded::new(OverloadReason::RateLimited);
                        if let Some(after) = retry_after {
                            err = err.with_retry_after(after);
                        }
                        this.state.set(State::Refused { error: Some(err) });
                        continue;
                    }
                    return Poll::Pending;
                }
                StateProj::Readying {
                    service,
                    request,
                    sent_at,
                } => {
                    let sent_at = *sent_at;
                    if let Err(e) = std::task::ready!(service.poll_ready(cx)) {
                        let result = Err(e.into());
                        feed(this.bucket, this.classifier, &result, sent_at);
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    let future = service.call(request.take().expect("polled after completion"));
                    this.state.set(State::Running { future, sent_at });
                }
                StateProj::Running { future, sent_at } => {
                    let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                    feed(this.bucket, this.classifier, &result, *sent_at);
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Done => panic!("token bucket ResponseFuture polled after completion"),
            }
        }
    }
}

/// Tells an adaptive bucket how a request sent at `sent_at` ended.
fn feed<Res, C: Classify<Res, BoxError>>(
    bucket: &TokenBucket,
    classifier: &C,
    result: &Result<Res, BoxError>,
    sent_at: Instant,
) {
    if bucket.is_adaptive() {
        let outcome = match classifier.classify(result.as_ref()) {
            // A server's pushback (gRPC's `grpc-retry-pushback-ms`) asks for less load even on
            // an answer that may be retried later: a throttle to the rate.
            Outcome::Retryable => match classifier.pushback(result.as_ref()) {
                Some(after) => Outcome::Overload(Some(after)),
                None => Outcome::Retryable,
            },
            outcome => outcome,
        };
        bucket.on_outcome(outcome, sent_at);
    }
}

impl<S, F, Req, C> std::fmt::Debug for ResponseFuture<S, F, Req, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("bucket", &self.bucket.name())
            .finish()
    }
}
