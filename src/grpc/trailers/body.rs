use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// The body of a [`ReadTrailers`](super::ReadTrailers) answer: the frames read while looking for
/// the trailers, then the rest of the inner body (when the limit was reached first). Frames are
/// handed on as they came: the same messages, the same trailers.
#[pin_project::pin_project]
pub struct TrailersBody<B: Body> {
    read: VecDeque<Frame<B::Data>>,
    rest: Option<B>,
}

impl<B: Body> TrailersBody<B> {
    pub(crate) fn new(read: VecDeque<Frame<B::Data>>, rest: Option<B>) -> Self {
        TrailersBody { read, rest }
    }
}

impl<B: Body> std::fmt::Debug for TrailersBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailersBody")
            .field("frames_read", &self.read.len())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}

impl<B> Body for TrailersBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            Some(rest) if self.read.is_empty() => rest.size_hint(),
            Some(_) => SizeHint::default(),
            None => {
                let len: usize = self
                    .read
                    .iter()
                    .filter_map(|f| f.data_ref().map(bytes::Buf::remaining))
                    .sum();
                SizeHint::with_exact(len as u64)
            }
        }
    }
}
