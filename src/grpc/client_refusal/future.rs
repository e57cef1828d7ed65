use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project::pin_project;

use super::client_code;
use crate::error::BoxError;
use crate::grpc::refusal::answer_with;
use crate::http::ResponseBody;

/// The response future of [`ClientRefusal`](super::ClientRefusal): the inner future, whose
/// refusal or timeout becomes a gRPC answer. It holds nothing but the inner future.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Called(#[pin] F),
    /// The inner service refused at readiness; taken by the first poll.
    Refused(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(future: F) -> Self {
        ResponseFuture {
            state: State::Called(future),
        }
    }

    pub(super) fn refused(refusal: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused(Some(refusal)),
        }
    }
}

fn answer<B>(err: BoxError) -> Result<Response<ResponseBody<B>>, BoxError> {
    match client_code(&err) {
        Some(code) => Ok(answer_with(code, err.as_ref())),
        None => Err(err),
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called(future) => Poll::Ready(match ready!(future.poll(cx)) {
                Ok(res) => Ok(res.map(ResponseBody::inner)),
                Err(err) => answer(err.into()),
            }),
            StateProj::Refused(refusal) => {
                let refusal = refusal.take().expect("polled after completion");
                Poll::Ready(answer(refusal))
            }
        }
    }
}
