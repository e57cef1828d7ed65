use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::error::BoxError;

/// The response future of [`Throttle`](super::Throttle) and of
/// [`Admission`](crate::pid::Admission): the inner service's answer, or the refusal at once.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Admitted(#[pin] F),
    Refused(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(future: F) -> Self {
        ResponseFuture {
            state: State::Admitted(future),
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused(Some(error)),
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
            StateProj::Admitted(future) => future.poll(cx).map_err(Into::into),
            StateProj::Refused(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "refused future polled after completion".into()))),
        }
    }
}
