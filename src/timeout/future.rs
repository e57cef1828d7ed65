use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::{Elapsed, ElapsedCause};
use crate::context::RequestContext;
use crate::error::BoxError;

/// The response future of [`Timeout`](super::Timeout).
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = Projected)]
#[derive(Debug)]
enum State<F> {
    /// The inner call is running under a deadline.
    Running {
        #[pin]
        inner: F,
        // Made on the first poll that finds the inner future pending, so a call that completes
        // at once never touches the timer; boxed, so the future stays small to move.
        sleep: Option<Pin<Box<Sleep>>>,
        // The start of this request's time and its end; the budget an `Elapsed` reports is
        // their difference, worked out only if it runs out.
        since: Instant,
        deadline: Instant,
        cause: ElapsedCause,
        // The context the layers below read the deadline from when the request could not hold
        // it for free; entered on every poll, since the inner future's work (a handler's body,
        // a retry's next attempt) runs there.
        scope: Option<RequestContext>,
    },
    /// The request failed before the inner service was called.
    Failed(Option<Elapsed>),
}

impl<F> ResponseFuture<F> {
    pub(super) fn running(
        inner: F,
        since: Instant,
        deadline: Instant,
        cause: ElapsedCause,
        scope: Option<RequestContext>,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                inner,
                sleep: None,
                since,
                deadline,
                cause,
                scope,
            },
        }
    }

    pub(super) fn failed(elapsed: Elapsed) -> Self {
        ResponseFuture {
            state: State::Failed(Some(elapsed)),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projected::Failed(elapsed) => {
                let elapsed = elapsed.take().expect("polled after completion");
                Poll::Ready(Err(elapsed.into()))
            }
            Projected::Running {
                inner,
                sleep,
                since,
                deadline,
                cause,
                scope,
            } => {
                let polled = match scope {
                    Some(context) => context.enter(|| inner.poll(cx)),
                    None => inner.poll(cx),
                };
                if let Poll::Ready(result) = polled {
                    return Poll::Ready(result.map_err(Into::into));
                }
                let sleep = sleep.get_or_insert_with(|| Box::pin(sleep_until(*deadline)));
                ready!(sleep.as_mut().poll(cx));
                let budget = deadline.saturating_duration_since(*since);
                Poll::Ready(Err(Elapsed::new(*cause, budget).into()))
            }
        }
    }
}
