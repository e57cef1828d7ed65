use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::error::{BoxError, OverloadReason, Overloaded};

/// The response future of [`Admission`](super::Admission): the inner call's, or a refusal
/// ready at once.
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
    Denied,
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(future: F) -> Self {
        ResponseFuture {
            state: State::Admitted(future),
        }
    }

    pub(super) fn denied() -> Self {
        ResponseFuture {
            state: State::Denied,
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
            StateProj::Admitted(f) => f.poll(cx).map_err(Into::into),
            StateProj::Denied => {
                Poll::Ready(Err(Overloaded::new(OverloadReason::AdmissionDenied).into()))
            }
        }
    }
}
