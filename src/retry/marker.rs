//! What the retry layer reads from and writes on requests, responses and errors.

use std::error::Error as StdError;
use std::fmt;

use crate::classify::{ClassifyFn, ErrorClassifier};
use crate::error::{BoxError, find_in_chain};
use crate::timeout::HasDeadline;

/// The header naming the attempt a request is (`2` on a retry), so a load balancer can send a
/// retry to another server (grey failures) and servers can count retries.
pub const ATTEMPT_HEADER: &str = "backstop-attempt";
/// The header on a response meaning "decided below, do not retry": a retry layer closer to the
/// failure saw it and retried it or declined to. It travels on HTTP responses from server to
/// caller; a server carries it onto its own failures with
/// [`PropagateRetriedLayer`](super::PropagateRetriedLayer).
pub const RETRIED_HEADER: &str = "backstop-retried";

/// Marks a request as safe to send twice. Put it in an `http::Request`'s extensions (needed for a
/// POST or PATCH; idempotent methods are safe without it), or return true from
/// [`RetryRequest::is_idempotent`] for your own request type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Idempotent;

/// Which attempt a request is: 1 for the first, 2 for the retry. The retry layer puts it in an
/// `http::Request`'s extensions (and writes [`ATTEMPT_HEADER`]) on the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt(pub u32);

/// A request the [`RetryLayer`](super::RetryLayer) can retry: it carries its deadline, says
/// whether it is idempotent, and can be marked as a retry.
///
/// Implemented for `http::Request<B>` (feature `http`): idempotent when its method is (GET, HEAD,
/// OPTIONS, TRACE, PUT, DELETE, as RFC 9110 defines them) or its extensions hold [`Idempotent`],
/// so a POST is retried only when marked. For a stricter rule (say, only marked requests), give
/// [`RetryLayerBuilder::idempotent_if`](super::RetryLayerBuilder::idempotent_if) a predicate.
/// The retry gets an [`Attempt`] extension and the [`ATTEMPT_HEADER`] header.
/// For your own type, both methods have defaults:
///
/// ```
/// use backstop::retry::RetryRequest;
/// use backstop::timeout::{Deadline, HasDeadline};
///
/// #[derive(Clone)]
/// struct Get { key: String, deadline: Option<Deadline>, attempt: u32 }
///
/// impl HasDeadline for Get {
///     fn deadline(&self) -> Option<Deadline> { self.deadline }
///     fn set_deadline(&mut self, d: Deadline) { self.deadline = Some(d) }
/// }
/// impl RetryRequest for Get {
///     fn is_idempotent(&self) -> bool { true }
///     fn set_attempt(&mut self, attempt: u32) { self.attempt = attempt }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `RetryRequest`, which `RetryLayer` needs (with `HasDeadline` and `Clone`); it is implemented for `http::Request<B>` (https://docs.rs/backstop/latest/backstop/retry/trait.RetryRequest.html)"
)]
pub trait RetryRequest: HasDeadline {
    /// True when the request may safely be sent twice. Default: false.
    fn is_idempotent(&self) -> bool {
        false
    }
    /// Marks the request as attempt number `attempt` (2 for the retry). Default: does nothing.
    fn set_attempt(&mut self, attempt: u32) {
        let _ = attempt;
    }
    /// True while a copy of the request can still be sent in full. Default: true. An HTTP
    /// request whose body is a [`ReplayBody`](crate::http::ReplayBody) that outgrew its limit
    /// or failed answers false, and is then not retried.
    fn can_replay(&self) -> bool {
        true
    }
}

#[cfg(feature = "http")]
impl<B> RetryRequest for http::Request<B> {
    fn is_idempotent(&self) -> bool {
        self.method().is_idempotent() || self.extensions().get::<Idempotent>().is_some()
    }
    fn set_attempt(&mut self, attempt: u32) {
        self.extensions_mut().insert(Attempt(attempt));
        self.headers_mut().insert(
            http::HeaderName::from_static(ATTEMPT_HEADER),
            http::HeaderValue::from(attempt),
        );
    }
    fn can_replay(&self) -> bool {
        crate::http::replay::can_replay(self.extensions())
    }
}

/// Reads and writes the "decided below" marker on a successful call's response, for
/// protocols that report failures in responses (an HTTP 5xx). Errors carry the marker as
/// [`AlreadyRetried`], for any protocol.
///
/// Implemented by the classifiers, since the classifier already knows the response type:
/// [`HttpClassifier`](crate::classify::HttpClassifier) reads and writes the [`RETRIED_HEADER`]
/// header; [`ErrorClassifier`] and [`classify_fn`](crate::classify::classify_fn) mark errors
/// only. For your own classifier, `impl<R> RetriedMarker<R> for MyClassifier {}` does the same.
pub trait RetriedMarker<Res> {
    /// True when `res` says a retry layer below already decided about it. Default: false.
    fn is_retried(&self, res: &Res) -> bool {
        let _ = res;
        false
    }
    /// Marks `res` as decided below. Default: does nothing.
    fn mark_retried(&self, res: &mut Res) {
        let _ = res;
    }
}

impl<Res> RetriedMarker<Res> for ErrorClassifier {}
impl<Res: crate::classify::DefaultClassify> RetriedMarker<Res>
    for crate::classify::DefaultClassifier
{
    fn is_retried(&self, res: &Res) -> bool {
        res.carries_retried_marker()
    }
    fn mark_retried(&self, res: &mut Res) {
        res.set_retried_marker()
    }
}
impl<F, Res> RetriedMarker<Res> for ClassifyFn<F> {}

#[cfg(feature = "http")]
impl<B> RetriedMarker<http::Response<B>> for crate::classify::HttpClassifier {
    fn is_retried(&self, res: &http::Response<B>) -> bool {
        res.headers().contains_key(RETRIED_HEADER)
    }
    fn mark_retried(&self, res: &mut http::Response<B>) {
        res.headers_mut().insert(
            http::HeaderName::from_static(RETRIED_HEADER),
            http::HeaderValue::from_static("1"),
        );
    }
}

/// An error a retry layer below already decided about, retrying it or declining to: layers
/// above do not retry it. (The name is from when only retried errors were marked.)
///
/// The [`RetryLayer`](super::RetryLayer) wraps the retryable errors it passes up in it (see
/// [`MarkRetried`](super::MarkRetried)); the original error is its
/// [`source`](StdError::source), so [`find_overload`](crate::find_overload),
/// [`is_timeout`](crate::is_timeout) and the classifiers still see it.
#[derive(Debug)]
pub struct AlreadyRetried {
    source: BoxError,
}

impl AlreadyRetried {
    /// Wraps `source`.
    pub fn new(source: BoxError) -> Self {
        AlreadyRetried { source }
    }

    /// The error that was decided about.
    pub fn inner(&self) -> &BoxError {
        &self.source
    }

    /// Unwraps the error that was decided about.
    pub fn into_inner(self) -> BoxError {
        self.source
    }

    /// True when `err`, or anything in its source chain, is marked as decided below.
    pub fn is_marked(err: &(dyn StdError + 'static)) -> bool {
        find_in_chain::<AlreadyRetried>(err).is_some()
    }
}

impl fmt::Display for AlreadyRetried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry decided below: {}", self.source)
    }
}

impl StdError for AlreadyRetried {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Decides which requests may be sent twice. See
/// [`RetryLayerBuilder::idempotent_if`](super::RetryLayerBuilder::idempotent_if).
pub trait Idempotency<Req> {
    /// True when `req` may be retried.
    fn allows(&self, req: &Req) -> bool;
}

/// The default: a request may be retried when it says it is idempotent
/// ([`RetryRequest::is_idempotent`]; for HTTP an idempotent method or the [`Idempotent`]
/// extension).
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkedIdempotent;

impl<Req: RetryRequest> Idempotency<Req> for MarkedIdempotent {
    fn allows(&self, req: &Req) -> bool {
        req.is_idempotent()
    }
}

/// Every request may be retried: the opt-in for services whose requests are all safe to repeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyRequest;

impl<Req> Idempotency<Req> for AnyRequest {
    fn allows(&self, _req: &Req) -> bool {
        true
    }
}

/// A request may be retried when the closure says so.
#[derive(Clone, Copy)]
pub struct IdempotentFn<F>(pub(super) F);

impl<F> fmt::Debug for IdempotentFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdempotentFn")
    }
}

impl<F, Req> Idempotency<Req> for IdempotentFn<F>
where
    F: Fn(&Req) -> bool,
{
    fn allows(&self, req: &Req) -> bool {
        (self.0)(req)
    }
}

/// For [`RetryLayerBuilder::idempotent_if`](super::RetryLayerBuilder::idempotent_if): an HTTP
/// request is idempotent when its method is (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or it
/// carries the [`Idempotent`] extension. This is also what `http::Request` answers by default,
/// so the predicate is only needed to combine with your own rules.
#[cfg(feature = "http")]
pub fn http_method_is_idempotent<B>(req: &http::Request<B>) -> bool {
    req.method().is_idempotent() || req.is_idempotent()
}
