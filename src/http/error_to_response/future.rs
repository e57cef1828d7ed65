use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project::pin_project;

use super::{Answer, HttpAnswer, ResponseBody};
use crate::error::BoxError;

/// The response future of [`ErrorToResponse`](super::ErrorToResponse): the inner future, whose
/// error becomes an answer. `H` is the [`OnError`](super::OnError) hook.
pub type ResponseFuture<F, H = ()> = AnswerFuture<F, HttpAnswer<H>>;

/// The response future of [`ErrorAnswer`](super::ErrorAnswer): the inner service's future,
/// whose error becomes the answer `A` gives. It holds nothing but the inner future, so dropping
/// it drops that future and whatever permits it holds.
#[pin_project]
#[derive(Debug)]
pub struct AnswerFuture<F, A> {
    #[pin]
    state: State<F>,
    answer: A,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Called(#[pin] F),
    /// The inner service failed its readiness check; taken by the first poll.
    Failed(Option<BoxError>),
}

impl<F, A> AnswerFuture<F, A> {
    pub(crate) fn called(future: F, answer: A) -> Self {
        AnswerFuture {
            state: State::Called(future),
            answer,
        }
    }

    pub(crate) fn failed(error: BoxError, answer: A) -> Self {
        AnswerFuture {
            state: State::Failed(Some(error)),
            answer,
        }
    }
}

impl<F, B, E, A> Future for AnswerFuture<F, A>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    A: Answer,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err: BoxError = match this.state.project() {
            StateProj::Called(future) => match ready!(future.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(ResponseBody::inner))),
                Err(err) => err.into(),
            },
            // A second poll after completion answers again rather than panicking: a polled-once
            // contract broken by the caller is no reason to take the server down.
            StateProj::Failed(err) => err
                .take()
                .unwrap_or_else(|| "polled after completion".into()),
        };
        Poll::Ready(Ok(this.answer.answer(&err)))
    }
}
