use std::task::{Context, Poll};

use tower_service::Service;

use super::admission::AdmissionController;
use super::future::ResponseFuture;
use crate::context::{CriticalityOf, SameCriticality};
use crate::error::{BoxError, OverloadReason, Overloaded};

/// The service made by [`AdmissionLayer`](super::AdmissionLayer).
///
/// Readiness is the inner service's; the admission draw happens in `call`, so a refusal never
/// waits for anything.
#[derive(Debug, Clone)]
pub struct Admission<S, K = SameCriticality> {
    inner: S,
    controller: AdmissionController,
    criticality: K,
}

impl<S> Admission<S> {
    /// Wraps `inner`, deciding by `controller`, every request alike.
    pub fn new(inner: S, controller: AdmissionController) -> Self {
        Admission::with_criticality(inner, controller, SameCriticality)
    }
}

impl<S, K> Admission<S, K> {
    /// Wraps `inner`, deciding by `controller` at the level `criticality` reads.
    pub fn with_criticality(inner: S, controller: AdmissionController, criticality: K) -> Self {
        Admission {
            inner,
            controller,
            criticality,
        }
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

impl<S, K, Req> Service<Req> for Admission<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: CriticalityOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let level = self.criticality.criticality_of(&req);
        if self.controller.try_admit_at(level) {
            ResponseFuture::admitted(self.inner.call(req))
        } else {
            ResponseFuture::refused(Overloaded::new(OverloadReason::AdmissionDenied).into())
        }
    }
}
