use std::task::{Context, Poll};

use http::Response;
use http_body::Body;
use tower_service::Service;

use super::{ResponseFuture, TrailersBody};
use crate::error::BoxError;

/// Made by [`ReadTrailersLayer`](super::ReadTrailersLayer); see the [module docs](super).
#[derive(Debug, Clone)]
pub struct ReadTrailers<S> {
    inner: S,
    limit: usize,
}

impl<S> ReadTrailers<S> {
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        ReadTrailers { inner, limit }
    }
}

impl<S, Req, B> Service<Req> for ReadTrailers<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrailersBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), self.limit)
    }
}
