use std::task::{Context, Poll};

use tower_service::Service;

use super::{LittleMeter, ResponseFuture};
use crate::classify::Classify;
use crate::error::BoxError;

/// A service measured by a [`LittleMeter`]. Clones share the meter.
#[derive(Debug, Clone)]
pub struct Little<S, C> {
    inner: S,
    meter: LittleMeter,
    classifier: C,
}

impl<S, C> Little<S, C> {
    pub(super) fn new(inner: S, meter: LittleMeter, classifier: C) -> Self {
        Little {
            inner,
            meter,
            classifier,
        }
    }

    /// The shared meter.
    pub fn meter(&self) -> &LittleMeter {
        &self.meter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for Little<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The guard is taken before the inner call, so time spent inside `call` counts too.
        let guard = self.meter.start();
        ResponseFuture::new(self.inner.call(req), guard, self.classifier.clone())
    }
}
