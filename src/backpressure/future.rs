use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tower_service::Service;

use super::Hold;
use super::admit::Admit;
use super::gate::Admission;
use crate::error::BoxError;

/// The response future of [`Backpressure`](super::Backpressure) and of
/// [`LifoQueue`](crate::lifo_queue::LifoQueue), which share one gate: waits for a slot (or fails
/// at once with `QueueFull`, or later with `Shed` from a LIFO queue), then runs the request.
/// Dropping it while it waits leaves the queue at once; dropping it while it runs frees the
/// slot. `F` is the inner service's future.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<S, F, Req, H> {
    #[pin]
    inner: Admit<S, F, Req, H>,
}

impl<S, F, Req, H> ResponseFuture<S, F, Req, H> {
    pub(crate) fn new(admission: Admission, service: S, request: Req) -> Self {
        ResponseFuture {
            inner: Admit::new(admission, service, request),
        }
    }
}

impl<S, F, Req, H> Future for ResponseFuture<S, F, Req, H>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    H: Hold<S::Response>,
{
    type Output = Result<H::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
