use std::task::{Context, Poll};

use http_body::Body;
use metrics::Counter;
use tower_service::Service;

use super::ReplayBody;

/// A service whose requests' bodies can be replayed.
///
/// Made by [`ReplayBodyLayer`](super::ReplayBodyLayer); see the [module docs](super).
#[derive(Debug, Clone)]
pub struct ReplayBodyService<S> {
    inner: S,
    limit: usize,
    too_large: Counter,
    body_error: Counter,
}

impl<S> ReplayBodyService<S> {
    pub(super) fn new(inner: S, limit: usize, too_large: Counter, body_error: Counter) -> Self {
        ReplayBodyService {
            inner,
            limit,
            too_large,
            body_error,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for ReplayBodyService<S>
where
    S: Service<http::Request<ReplayBody<B>>>,
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let body = ReplayBody::new(
            body,
            self.limit,
            self.too_large.clone(),
            self.body_error.clone(),
        );
        parts.extensions.insert(body.handle());
        self.inner.call(http::Request::from_parts(parts, body))
    }
}
