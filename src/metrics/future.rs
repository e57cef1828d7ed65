use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use super::InFlight;
use crate::classify::Classify;
use crate::error::BoxError;

/// The response future of [`Little`](super::Little). Dropping it before it completes records the
/// request as `cancelled`.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, C> {
    #[pin]
    inner: F,
    guard: Option<InFlight>,
    classifier: C,
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn new(inner: F, guard: InFlight, classifier: C) -> Self {
        ResponseFuture {
            inner,
            guard: Some(guard),
            classifier,
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
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(guard) = this.guard.take() {
            guard.finish(this.classifier.classify(result.as_ref()));
        }
        Poll::Ready(result)
    }
}
