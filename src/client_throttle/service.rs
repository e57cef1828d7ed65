use std::task::{Context, Poll};

use tower_service::Service;

use super::{ClientThrottle, ResponseFuture};
use crate::classify::Classify;
use crate::error::{BoxError, OverloadReason, Overloaded};

/// The service made by [`ClientThrottleLayer`](super::ClientThrottleLayer).
///
/// Readiness is the inner service's; the draw happens in `call`, so a local refusal never
/// waits for anything and never reaches the inner service.
#[derive(Debug, Clone)]
pub struct ClientThrottleService<S, C> {
    inner: S,
    throttle: ClientThrottle,
    classifier: C,
}

impl<S, C> ClientThrottleService<S, C> {
    /// Wraps `inner`, deciding by `throttle` and reading answers with `classifier`.
    pub fn new(inner: S, throttle: ClientThrottle, classifier: C) -> Self {
        ClientThrottleService {
            inner,
            throttle,
            classifier,
        }
    }

    /// The shared throttle.
    pub fn throttle(&self) -> &ClientThrottle {
        &self.throttle
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

impl<S, C, Req> Service<Req> for ClientThrottleService<S, C>
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
        if self.throttle.try_send() {
            ResponseFuture::sent(
                self.inner.call(req),
                self.throttle.clone(),
                self.classifier.clone(),
            )
        } else {
            ResponseFuture::refused(Overloaded::new(OverloadReason::ClientThrottled).into())
        }
    }
}
