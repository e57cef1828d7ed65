use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, header::CONTENT_TYPE};

use crate::OverloadReason;
use crate::error::{find_overload, is_timeout};
use crate::grpc::status::{
    Code, GRPC_MESSAGE_HEADER, GRPC_PUSHBACK_HEADER, GRPC_STATUS_HEADER, Pushback,
};
use crate::http::DEFAULT_RETRY_AFTER;
use crate::http::ResponseBody;
use crate::http::error_to_response::Answer;

/// The gRPC code a server answers an error with: a backstop refusal anywhere in the error's
/// source chain is `RESOURCE_EXHAUSTED` when the client asks too much (`Throttled`,
/// `RateLimited`) and `UNAVAILABLE` when the server is full (every other reason); a timeout
/// ([`is_timeout`](crate::is_timeout)) is `DEADLINE_EXCEEDED`; anything else is `UNKNOWN`.
///
/// ```
/// use backstop::grpc::{Code, error_code};
/// use backstop::{BoxError, OverloadReason, Overloaded};
///
/// let mine: BoxError = Overloaded::new(OverloadReason::Throttled).into();
/// assert_eq!(error_code(mine.as_ref()), Code::RESOURCE_EXHAUSTED);
/// let full: BoxError = Overloaded::new(OverloadReason::QueueFull).into();
/// assert_eq!(error_code(full.as_ref()), Code::UNAVAILABLE);
/// ```
pub fn error_code(err: &(dyn StdError + 'static)) -> Code {
    if let Some(overload) = find_overload(err) {
        match overload.reason() {
            OverloadReason::Throttled | OverloadReason::RateLimited => Code::RESOURCE_EXHAUSTED,
            _ => Code::UNAVAILABLE,
        }
    } else if is_timeout(err) {
        Code::DEADLINE_EXCEEDED
    } else {
        Code::UNKNOWN
    }
}

/// The trailers-only gRPC answer to `err`: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` ([`error_code`]), a short `grpc-message`, and on a refusal
/// `grpc-retry-pushback-ms` from its retry-after (whole milliseconds, rounded up;
/// [`DEFAULT_RETRY_AFTER`](crate::http::DEFAULT_RETRY_AFTER) when it names none), and an
/// empty body. For a handler whose own call failed, too.
///
/// ```
/// use backstop::grpc::error_to_grpc;
/// use backstop::{BoxError, OverloadReason, Overloaded};
/// use std::time::Duration;
///
/// let refusal: BoxError = Overloaded::new(OverloadReason::QueueFull)
///     .with_retry_after(Duration::from_millis(40))
///     .into();
/// let res: http::Response<()> = error_to_grpc(refusal.as_ref());
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["grpc-status"], "14");
/// assert_eq!(res.headers()["grpc-retry-pushback-ms"], "40");
/// ```
pub fn error_to_grpc<B: Default>(err: &(dyn StdError + 'static)) -> Response<B> {
    answer_with(error_code(err), err)
}

/// The trailers-only answer to `err` with `code`, the pushback included when `err` is a refusal.
pub(crate) fn answer_with<B: Default>(code: Code, err: &(dyn StdError + 'static)) -> Response<B> {
    let mut res = Response::new(B::default());
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        HeaderName::from_static(GRPC_STATUS_HEADER),
        code.header_value(),
    );
    let message = match code {
        Code::RESOURCE_EXHAUSTED => "over its share",
        Code::UNAVAILABLE => "server full",
        Code::DEADLINE_EXCEEDED => "deadline exceeded",
        _ => "internal error",
    };
    headers.insert(
        HeaderName::from_static(GRPC_MESSAGE_HEADER),
        // Spaces are sent as they are; gRPC percent-encodes only outside printable ASCII.
        HeaderValue::from_static(message),
    );
    if let Some(overload) = find_overload(err) {
        let after: Duration = overload.retry_after().unwrap_or(DEFAULT_RETRY_AFTER);
        headers.insert(
            HeaderName::from_static(GRPC_PUSHBACK_HEADER),
            Pushback::header_value(after),
        );
    }
    res
}

/// Called with every error [`ErrorToGrpc`](super::ErrorToGrpc) turns into an answer, and the
/// code it answers with: the place to log errors whose text the answer does not carry.
/// Implemented for `()` (nothing) and any `Fn(&BoxError, Code)`; it runs on the request's path,
/// refusals included, so keep it cheap.
pub trait OnGrpcError {
    /// Sees one error and the code it is answered with.
    fn on_error(&self, error: &crate::BoxError, code: Code);
}

impl OnGrpcError for () {
    fn on_error(&self, _error: &crate::BoxError, _code: Code) {}
}

impl<F: Fn(&crate::BoxError, Code)> OnGrpcError for F {
    fn on_error(&self, error: &crate::BoxError, code: Code) {
        self(error, code)
    }
}

/// The gRPC [`Answer`]: a trailers-only answer ([`error_to_grpc`]) and the [`OnGrpcError`]
/// hook `H`; what [`ErrorToGrpc`](super::ErrorToGrpc) answers errors with.
#[derive(Clone, Copy)]
pub struct GrpcAnswer<H = ()> {
    on_error: H,
}

impl<H> GrpcAnswer<H> {
    pub(crate) fn new(on_error: H) -> Self {
        GrpcAnswer { on_error }
    }
}

// No `H: Debug` bound: the hook is usually a closure.
impl<H> fmt::Debug for GrpcAnswer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcAnswer").finish_non_exhaustive()
    }
}

impl<H: OnGrpcError> Answer for GrpcAnswer<H> {
    fn answer<B>(&self, error: &crate::BoxError) -> Response<ResponseBody<B>> {
        let err = error.as_ref() as &(dyn StdError + 'static);
        self.on_error.on_error(error, error_code(err));
        error_to_grpc(err)
    }
}
