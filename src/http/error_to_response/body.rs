use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// The response body of [`ErrorToResponse`](super::ErrorToResponse): the inner service's body
/// on success, streamed unchanged, or the short body of an error answer (empty unless
/// [`expose_error_text`](super::ErrorToResponseLayer::expose_error_text) is on).
///
/// Its `Data` and `Error` are the inner body's, so a body axum or hyper accepts (`Data =
/// Bytes`, an error that converts into a `BoxError`) stays one they accept. An error answer
/// needs `Data: From<String>`, which `Bytes` is.
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    Inner(#[pin] B),
    /// The text of an error answer, taken by the first poll; `None` is an empty body.
    Text(Option<String>),
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner(body),
        }
    }

    pub(crate) fn text(text: String) -> Self {
        ResponseBody {
            kind: Kind::Text((!text.is_empty()).then_some(text)),
        }
    }

    /// An empty body: what a refusal, a timeout or an error is answered with by default.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Text(None),
        }
    }

    /// The inner service's body, or `None` for an error answer.
    pub fn into_inner(self) -> Option<B> {
        match self.kind {
            Kind::Inner(body) => Some(body),
            Kind::Text(_) => None,
        }
    }
}

/// An empty body (this lets [`Overloaded::to_http_response`](crate::Overloaded::to_http_response)
/// build the refusal answer).
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<String>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner(body) => body.poll_frame(cx),
            KindProj::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t.into())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body) => body.size_hint(),
            Kind::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}
