use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project::pin_project;

use super::{OnGrpcError, error_code, error_to_grpc};
use crate::error::BoxError;
use crate::http::ResponseBody;

/// The response future of [`ErrorToGrpc`](super::ErrorToGrpc): the inner future, whose error
/// becomes an answer. Dropping it drops the inner future and every permit it holds.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, H> {
    #[pin]
    state: State<F>,
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
    pub(crate) fn called(future: F, on_error: H) -> Self {
        ResponseFuture {
            state: State::Called(future),
            on_error,
        }
    }

    pub(crate) fn failed(error: BoxError, on_error: H) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
            on_error,
        }
    }
}

impl<F, B, E, H> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    H: OnGrpcError,
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
        let err_ref = err.as_ref() as &(dyn std::error::Error + 'static);
        this.on_error.on_error(&err, error_code(err_ref));
        Poll::Ready(Ok(error_to_grpc(err_ref)))
    }
}
