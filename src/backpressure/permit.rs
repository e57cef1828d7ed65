//! How long a request keeps its slot: until its response future completes, or, for HTTP, until
//! its response body has been sent.

pub use super::gate::Permit;

/// Decides what holds the [`Permit`] once the inner service has answered.
///
/// [`UntilResponse`] (the default) drops it with the response future. [`UntilBodyEnd`] (feature
/// `http`) moves it into the response body, so a slow download keeps its slot until the last
/// byte: tower-http's `ConcurrencyLimit` frees it when the headers leave (tower-http #447), which
/// lets a server take on far more streaming work than its limit says.
pub trait Hold<Res> {
    /// The response handed back to the caller.
    type Output;
    /// Attaches `permit` to `response`, or drops it.
    fn hold(response: Res, permit: Permit) -> Self::Output;
}

/// Releases the slot as soon as the response future completes. Right for any response that is
/// complete when it is returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct UntilResponse;

impl<Res> Hold<Res> for UntilResponse {
    type Output = Res;
    fn hold(response: Res, permit: Permit) -> Res {
        drop(permit);
        response
    }
}

/// Keeps the slot until the HTTP response body has ended (its last frame was read, or it
/// reported end of stream) or was dropped. The response body becomes a [`PermitBody`].
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct UntilBodyEnd;

#[cfg(feature = "http")]
impl<B> Hold<http::Response<B>> for UntilBodyEnd {
    type Output = http::Response<PermitBody<B>>;
    fn hold(response: http::Response<B>, permit: Permit) -> Self::Output {
        response.map(|body| PermitBody::new(body, permit))
    }
}

#[cfg(feature = "http")]
pub use self::body::PermitBody;

#[cfg(feature = "http")]
mod body {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Body, Frame, SizeHint};
    use pin_project::pin_project;

    use super::Permit;

    /// A response body that holds its request's [`Permit`] until the body ends (end of stream or
    /// an error) or is dropped.
    #[pin_project]
    #[derive(Debug)]
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }

    impl<B> PermitBody<B> {
        pub(crate) fn new(inner: B, permit: Permit) -> Self {
            PermitBody {
                inner,
                permit: Some(permit),
            }
        }

        /// True while the body still holds its slot.
        pub fn holds_permit(&self) -> bool {
            self.permit.is_some()
        }

        /// The wrapped body.
        pub fn get_ref(&self) -> &B {
            &self.inner
        }
    }

    /// An empty body that holds no slot: what a layer above answers with when it refuses the
    /// request itself (for example `overload_to_response` turning a refusal into a 503).
    impl<B: Default> Default for PermitBody<B> {
        fn default() -> Self {
            PermitBody {
                inner: B::default(),
                permit: None,
            }
        }
    }

    impl<B: Body> Body for PermitBody<B> {
        type Data = B::Data;
        type Error = B::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let this = self.project();
            let frame = this.inner.poll_frame(cx);
            match &frame {
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.permit.take()),
                Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
            }
            frame
        }

        fn is_end_stream(&self) -> bool {
            // hyper may stop polling once this says true, so the slot cannot wait for a final
            // poll; it is freed on drop, which follows at once.
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }
}
