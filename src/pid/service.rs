use std::task::{Context, Poll};

use tower_service::Service;

use super::admission::AdmissionController;
use super::future::ResponseFuture;
use crate::error::{BoxError, OverloadReason, Overloaded};

/// The service made by [`AdmissionLayer`](super::AdmissionLayer).
///
/// Readiness is the inner service's; the admission draw happens in `call`, so a refusal never
/// waits for anything.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    controller: AdmissionController,
}

impl<S> Admission<S> {
    /// Wraps `inner`, deciding by `controller`.
    pub fn new(inner: S, controller: AdmissionController) -> Self {
        Admission { inner, controller }
    }

    /// The shared controller.
    pub fn controller(&self) -> &AdmissionController {
        &self.controller
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Admission<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.controller.try_admit() {
            ResponseFuture::admitted(self.inner.call(req))
        } else {
            ResponseFuture::refused(Overloaded::new(OverloadReason::AdmissionDenied).into())
        }
    }
}
