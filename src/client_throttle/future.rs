use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::{pin_project, pinned_drop};

use super::ClientThrottle;
use crate::classify::Classify;
use crate::error::BoxError;

/// The response future of [`ClientThrottleService`](super::ClientThrottleService): the inner
/// call's answer, counted as an accept unless it is an overload; or the local refusal at once.
#[pin_project(PinnedDrop)]
#[derive(Debug)]
pub struct ResponseFuture<F, C> {
    #[pin]
    state: State<F>,
    /// Who to tell about the answer; `None` once told (or for a local refusal).
    pending: Option<(ClientThrottle, C)>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Sent(#[pin] F),
    Refused(Option<BoxError>),
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn sent(future: F, throttle: ClientThrottle, classifier: C) -> Self {
        ResponseFuture {
            state: State::Sent(future),
            pending: Some((throttle, classifier)),
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused(Some(error)),
            pending: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Sent(future) => {
                let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                if let Some((throttle, classifier)) = this.pending.take()
                    && !classifier.classify(result.as_ref()).is_overload()
                {
                    throttle.accepted();
                }
                Poll::Ready(result)
            }
            StateProj::Refused(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "refused future polled after completion".into()))),
        }
    }
}

#[pinned_drop]
impl<F, C> PinnedDrop for ResponseFuture<F, C> {
    /// A caller that stops waiting learned nothing about the server's load: the request counts
    /// as accepted, not as a refusal that would throttle the client's next ones.
    fn drop(self: Pin<&mut Self>) {
        if let Some((throttle, _)) = self.project().pending.take() {
            throttle.accepted();
        }
    }
}
