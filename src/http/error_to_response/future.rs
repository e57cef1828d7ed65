use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project::pin_project;

use super::respond::error_answer;
use super::{OnError, ResponseBody};
use crate::error::BoxError;

/// The response future of [`ErrorToResponse`](super::ErrorToResponse): the inner service's
/// future, whose error becomes an answer. `F` is the inner future, `H` the
/// [`OnError`](super::OnError) hook. It holds nothing but the inner future, so dropping it
/// drops that future and whatever permits it holds.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, H> {
    #[pin]
    state: State<F>,
    expose_error_text: bool,
    on_error: H,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Called(#[pin] F),
    /// The inner service failed its readiness check; taken by the first poll.
    Failed(Option<BoxError>),
}

impl<F, H> ResponseFuture<F, H> {
    pub(crate) fn called(future: F, expose_error_text: bool, on_error: H) -> Self {
        ResponseFuture {
            state: State::Called(future),
            expose_error_text,
            on_error,
        }
    }

    pub(crate) fn failed(error: BoxError, expose_error_text: bool, on_error: H) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
            expose_error_text,
            on_error,
        }
    }
}

impl<F, B, E, H> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    H: OnError,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err: BoxError = match this.state.project() {
            StateProj::Called(future) => match ready!(future.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(ResponseBody::inner))),
                Err(err) => err.into(),
            },
            StateProj::Failed(err) => err
                .take()
                .expect("ErrorToResponse's future polled after it completed"),
        };
        let res = error_answer(&err, *this.expose_error_text);
        this.on_error.on_error(&err, res.status());
        Poll::Ready(Ok(res))
    }
}
