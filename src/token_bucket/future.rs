use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::util::Oneshot;
use tower_service::Service;

use super::TokenBucket;
use super::bucket::Waiter;
use crate::classify::Classify;
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
#[pin_project]
pub struct ResponseFuture<S: Service<Req>, Req, C> {
    #[pin]
    state: State<S, Req>,
    bucket: TokenBucket,
    classifier: C,
}

#[pin_project(project = StateProj)]
enum State<S: Service<Req>, Req> {
    Waiting {
        acquire: Acquire,
        give_up: Option<Pin<Box<Sleep>>>,
        service: Option<S>,
        request: Option<Req>,
    },
    Running {
        #[pin]
        call: Oneshot<S, Req>,
        /// When the request went on: tells the adaptive rate which congestion event an
        /// overload answer belongs to.
        sent_at: Instant,
    },
    Refused {
        error: Option<Overloaded>,
    },
}

impl<S: Service<Req>, Req, C> ResponseFuture<S, Req, C> {
    pub(super) fn running(bucket: TokenBucket, classifier: C, service: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Running {
                call: Oneshot::new(service, request),
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

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
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
                            let call = Oneshot::new(
                                service.take().expect("polled after completion"),
                                request.take().expect("polled after completion"),
                            );
                            this.state.set(State::Running {
                                call,
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
                StateProj::Running { call, sent_at } => {
                    let result = std::task::ready!(call.poll(cx)).map_err(Into::into);
                    if this.bucket.is_adaptive() {
                        let outcome = this.classifier.classify(result.as_ref());
                        this.bucket.on_outcome(outcome, *sent_at);
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, C> std::fmt::Debug for ResponseFuture<S, Req, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("bucket", &self.bucket.name())
            .finish()
    }
}
