//! Carrying "decided below" out of a server: [`PropagateRetriedLayer`].

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use super::marker::RETRIED_HEADER;
use super::marker::{AlreadyRetried, RetriedMarker};
use crate::classify::{Classify, ErrorClassifier, Outcome};
use crate::error::BoxError;

thread_local! {
    /// `Some(decided)` while a [`PropagateRetried`] future is being polled on this thread.
    static DECIDED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Called by the retry future when it passes a failure up marked: tells the enclosing server
/// scope, if there is one, that a failure was decided below.
pub(super) fn note_decided() {
    DECIDED.with(|d| {
        if d.get().is_some() {
            d.set(Some(true));
        }
    });
}

/// Restores the outer scope when the inner poll ends, even by a panic.
struct Enter {
    outer: Option<bool>,
}

impl Enter {
    fn new(decided: bool) -> Self {
        Enter {
            outer: DECIDED.with(|d| d.replace(Some(decided))),
        }
    }

    /// Leaves the scope; whether a failure was decided below by the end of this poll.
    fn leave(self, decided: bool) -> bool {
        let now = DECIDED.with(|d| d.get()).unwrap_or(decided);
        drop(self);
        now
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        DECIDED.with(|d| d.set(self.outer));
    }
}

/// Marks a server's retryable answers "decided below" when a call its handler made came back
/// marked, so the mark crosses process boundaries ([module docs](super#decided-below)).
///
/// The retry layer marks a failure it passes up ([`AlreadyRetried`], the [`RETRIED_HEADER`]);
/// inside one stack the mark travels with the error or response. Across processes it has to be
/// carried by the server whose handler made the call: service B's handler calls C through a
/// retry layer, C's 500 comes back marked, and B answers its caller A with its own 502, which A
/// would retry (sending B, and so C, the request twice more). [`PropagateRetried`] closes that
/// gap: it runs each request of a server in a small scope that the retry layers in the handler's
/// calls report to; when the handler's own answer is a retryable failure and a call it made had
/// a failure decided below it, the answer goes out marked too. (Even when the handler fails for
/// another reason after such a call: the mark errs towards less work.)
///
/// The scope is a thread-local set around each poll of the server's future (as tokio's task
/// locals are), so it reaches every call the handler awaits, however deeply nested, but not a
/// task it spawns: a handler that spawns its calls and fails from their results should mark its
/// answer itself ([`RetriedMarker::mark_retried`]).
///
/// Put it on the server, outside the handler (with the classifier the callers use:
/// [`HttpClassifier`](crate::classify::HttpClassifier) for HTTP, which writes the
/// [`RETRIED_HEADER`]):
///
/// ```
/// # #[cfg(feature = "http")] {
/// use backstop::classify::HttpClassifier;
/// use backstop::retry::PropagateRetriedLayer;
/// use tower::ServiceBuilder;
///
/// # let handler = tower::service_fn(|_: http::Request<()>| async {
/// #     Ok::<_, backstop::BoxError>(http::Response::new(()))
/// # });
/// let server = ServiceBuilder::new()
///     .layer(PropagateRetriedLayer::new(HttpClassifier))
///     .service(handler);
/// # let _ = server;
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateRetriedLayer<C = ErrorClassifier> {
    classifier: C,
}

impl<C> PropagateRetriedLayer<C> {
    /// Reads the server's answers with `classifier`: only a
    /// [`Retryable`](crate::classify::Outcome::Retryable) answer is marked.
    pub fn new(classifier: C) -> Self {
        PropagateRetriedLayer { classifier }
    }
}

impl<S, C: Clone> Layer<S> for PropagateRetriedLayer<C> {
    type Service = PropagateRetried<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateRetried {
            inner,
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`PropagateRetriedLayer`].
#[derive(Debug, Clone)]
pub struct PropagateRetried<S, C = ErrorClassifier> {
    inner: S,
    classifier: C,
}

impl<S, C> PropagateRetried<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C> Service<Req> for PropagateRetried<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + RetriedMarker<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PropagateFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // A service may start its calls in `call` itself: they report to the scope too.
        let enter = Enter::new(false);
        let inner = self.inner.call(req);
        let decided = enter.leave(false);
        PropagateFuture {
            inner,
            classifier: self.classifier.clone(),
            decided,
        }
    }
}

/// The response future of [`PropagateRetried`].
#[pin_project]
pub struct PropagateFuture<F, C> {
    #[pin]
    inner: F,
    classifier: C,
    decided: bool,
}

impl<F, C> fmt::Debug for PropagateFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateFuture")
            .field("decided", &self.decided)
            .finish()
    }
}

impl<F, Res, E, C> Future for PropagateFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res, BoxError> + RetriedMarker<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let enter = Enter::new(*this.decided);
        let polled = this.inner.poll(cx);
        *this.decided = enter.leave(*this.decided);
        let result = ready!(polled).map_err(Into::into);
        if !*this.decided || this.classifier.classify(result.as_ref()) != Outcome::Retryable {
            return Poll::Ready(result);
        }
        Poll::Ready(match result {
            Ok(mut res) => {
                this.classifier.mark_retried(&mut res);
                Ok(res)
            }
            Err(e) if AlreadyRetried::is_marked(e.as_ref()) => Err(e),
            Err(e) => Err(Box::new(AlreadyRetried::new(e))),
        })
    }
}
