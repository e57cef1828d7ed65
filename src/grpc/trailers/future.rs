use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::Response;
use http::response::Parts;
use http_body::{Body, Frame};
use pin_project::pin_project;

use super::TrailersBody;
use crate::error::BoxError;
use crate::grpc::classify::TrailersStatus;
use crate::grpc::status::{Code, GrpcStatus, is_grpc};

/// The response future of [`ReadTrailers`](super::ReadTrailers): the inner future, then, for a
/// gRPC answer with no status in its headers, the body up to its trailers or the limit.
/// Dropping it drops the inner future or body.
#[pin_project]
pub struct ResponseFuture<F, B: Body> {
    #[pin]
    inner: F,
    limit: usize,
    reading: Option<Reading<B>>,
}

struct Reading<B: Body> {
    parts: Parts,
    body: B,
    frames: VecDeque<Frame<B::Data>>,
    bytes: usize,
}

impl<F, B: Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("limit", &self.limit)
            .field("reading_body", &self.reading.is_some())
            .finish()
    }
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(crate) fn new(inner: F, limit: usize) -> Self {
        ResponseFuture {
            inner,
            limit,
            reading: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<TrailersBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.reading.is_none() {
            let res = ready!(this.inner.poll(cx)).map_err(Into::into)?;
            if !is_grpc(res.headers()) || GrpcStatus::from_headers(res.headers()).is_some() {
                return Poll::Ready(Ok(res.map(|b| TrailersBody::new(VecDeque::new(), Some(b)))));
            }
            let (parts, body) = res.into_parts();
            *this.reading = Some(Reading {
                parts,
                body,
                frames: VecDeque::new(),
                bytes: 0,
            });
        }
        let reading = this.reading.as_mut().expect("set above");
        loop {
            if reading.bytes > *this.limit {
                // Too long to wait for: it streams on, its status unread.
                let r = this.reading.take().expect("reading");
                let body = TrailersBody::new(r.frames, Some(r.body));
                return Poll::Ready(Ok(Response::from_parts(r.parts, body)));
            }
            // A body that ends without trailers ends as if it had sent empty ones: no status.
            let (frame, synthetic) = match ready!(Pin::new(&mut reading.body).poll_frame(cx)) {
                Some(Ok(frame)) => (frame, false),
                Some(Err(e)) => {
                    this.reading.take();
                    return Poll::Ready(Err(e.into()));
                }
                None => (Frame::trailers(http::HeaderMap::new()), true),
            };
            let status = match frame.trailers_ref() {
                Some(trailers) => Some(GrpcStatus::from_headers(trailers).unwrap_or(GrpcStatus {
                    code: Code::UNKNOWN,
                    pushback: None,
                })),
                None => {
                    reading.bytes += frame.data_ref().map_or(0, Buf::remaining);
                    None
                }
            };
            if !synthetic {
                reading.frames.push_back(frame);
            }
            if let Some(status) = status {
                let mut r = this.reading.take().expect("reading");
                r.parts.extensions.insert(TrailersStatus(status));
                let body = TrailersBody::new(r.frames, None);
                return Poll::Ready(Ok(Response::from_parts(r.parts, body)));
            }
        }
    }
}
