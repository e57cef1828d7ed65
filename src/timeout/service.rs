use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::{Deadline, Elapsed, ElapsedCause, HasDeadline, ResponseFuture};
use crate::context::RequestContext;
use crate::error::BoxError;

/// A service whose calls end by the sooner of its own timeout and its caller's deadline.
///
/// Made by [`TimeoutLayer`](super::TimeoutLayer); see the [module docs](super).
#[derive(Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    fraction: f64,
    always_write: bool,
    wait: ReadyWait,
}

/// The wait for the inner service's readiness, which counts against the next request's time.
#[derive(Debug, Default)]
enum ReadyWait {
    /// Not waiting: the clock for the next request starts when it is called.
    #[default]
    Idle,
    /// The inner service said it was not ready at `since`; the timer fires at `since + timeout`.
    Waiting {
        since: Instant,
        timer: Pin<Box<Sleep>>,
    },
    /// The inner service became ready after a wait that started at `since`.
    ReadyAfter { since: Instant },
    /// The layer's timeout ran out before the inner service was ready: the next call fails
    /// without reaching it.
    Expired,
}

impl<S> Timeout<S> {
    pub(super) fn new(inner: S, timeout: Duration, fraction: f64, always_write: bool) -> Self {
        Timeout {
            inner,
            timeout,
            fraction,
            always_write,
            wait: ReadyWait::Idle,
        }
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

impl<S: Clone> Clone for Timeout<S> {
    /// A clone starts with no readiness wait of its own: readiness belongs to one handle.
    fn clone(&self) -> Self {
        Timeout::new(
            self.inner.clone(),
            self.timeout,
            self.fraction,
            self.always_write,
        )
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: HasDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.wait, ReadyWait::Expired) {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if let ReadyWait::Waiting { since, .. } = self.wait {
                    self.wait = ReadyWait::ReadyAfter { since };
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.wait = ReadyWait::Idle;
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = match &mut self.wait {
                    ReadyWait::Waiting { timer, .. } => timer,
                    wait => {
                        let since = match *wait {
                            ReadyWait::ReadyAfter { since } => since,
                            _ => Instant::now(),
                        };
                        let at = Deadline::after_from(since, timeout).instant();
                        *wait = ReadyWait::Waiting {
                            since,
                            timer: Box::pin(sleep_until(at)),
                        };
                        match wait {
                            ReadyWait::Waiting { timer, .. } => timer,
                            _ => unreachable!("just set"),
                        }
                    }
                };
                if timer.as_mut().poll(cx).is_ready() {
                    // Ready in the sense that the next call has an answer: the timeout.
                    self.wait = ReadyWait::Expired;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = Instant::now();
        // Matched in place first: the common case leaves the state as it is, with no drop.
        let since = match self.wait {
            ReadyWait::Idle => now,
            _ => match std::mem::take(&mut self.wait) {
                ReadyWait::Expired => {
                    return ResponseFuture::failed(Elapsed::new(
                        ElapsedCause::OwnTimeout,
                        self.timeout,
                    ));
                }
                ReadyWait::ReadyAfter { since } | ReadyWait::Waiting { since, .. } => since,
                ReadyWait::Idle => now,
            },
        };
        let own = Deadline::after_from(since, self.timeout).instant();
        // Precedence: the request's own deadline, then the scope of the request being served.
        // The scope is read only for a request without one: a thread-local access saved.
        let explicit = req.deadline();
        let outer = match explicit {
            Some(_) => None,
            None => Some(crate::context::current()),
        };
        let caller = explicit.or_else(|| outer.and_then(|c| c.deadline()));
        let (deadline, cause) = match caller {
            Some(caller) => {
                let remaining = caller.instant().saturating_duration_since(now);
                if remaining.is_zero() {
                    return ResponseFuture::failed(Elapsed::new(
                        ElapsedCause::CallerDeadline,
                        Duration::ZERO,
                    ));
                }
                let scaled = Deadline::after_from(now, scale(remaining, self.fraction)).instant();
                if scaled < own {
                    (scaled, ElapsedCause::CallerDeadline)
                } else {
                    (own, ElapsedCause::OwnTimeout)
                }
            }
            None => (own, ElapsedCause::OwnTimeout),
        };
        let new = Deadline::at(deadline);
        let scope = match outer {
            // The request has a deadline and so a slot for it: tightened in place, no
            // allocation (the result is never later than the request's own deadline).
            None => {
                if explicit != Some(new) {
                    req.set_deadline(new);
                }
                None
            }
            Some(_) if self.always_write || req.sets_deadline_for_free() => {
                req.set_deadline(new);
                None
            }
            // An `http::Request` without one, where a new extension is a boxed entry (and a new
            // map): the layers below read the deadline from the scope instead, entered around
            // `call` and on every poll of the response future.
            Some(outer) => Some(RequestContext::new().with_deadline(new).within(outer)),
        };
        let inner = match scope {
            Some(context) => context.enter(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ResponseFuture::running(inner, since, deadline, cause, scope)
    }
}

/// `remaining × fraction`, for a fraction in (0, 1]. Cheaper than `Duration::mul_f64`, which
/// validates a general float on every request: here the product never exceeds `remaining`.
fn scale(remaining: Duration, fraction: f64) -> Duration {
    if fraction >= 1.0 {
        remaining
    } else {
        // Through u64: a u128 to float conversion is a library call. Capping at u64::MAX ns
        // (584 years) changes no real deadline.
        let nanos = u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos((nanos as f64 * fraction) as u64)
    }
}
