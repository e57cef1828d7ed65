use tower_layer::Layer;

use super::{ErrorToResponse, HttpAnswer};

/// Turns every error of the service below into an HTTP answer, so the stack's error type is
/// `Infallible`; see the [module docs](super).
///
/// `H` is the [`OnError`](super::OnError) hook, `()` (none) by default.
///
/// ```
/// use backstop::http::ErrorToResponseLayer;
/// use backstop::{OverloadReason, Overloaded};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ErrorToResponseLayer::new())
///     .service_fn(|_req: http::Request<()>| async {
///         Err::<http::Response<String>, _>(backstop::BoxError::from(Overloaded::new(OverloadReason::QueueFull)))
///     });
/// // The error type is `Infallible`: every error is an answer.
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()["retry-after"], "1");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorToResponseLayer<H = ()> {
    expose_error_text: bool,
    on_error: H,
}

impl ErrorToResponseLayer {
    /// Refusals become 429 or 503 with `Retry-After`, timeouts 504, other errors 500, all with
    /// an empty body.
    pub fn new() -> Self {
        ErrorToResponseLayer {
            expose_error_text: false,
            on_error: (),
        }
    }
}

impl<H> ErrorToResponseLayer<H> {
    /// Puts the error's `Display` in the answer's body, one line of `text/plain`. Off by default: an
    /// error's text can name internal hosts, paths or queries that a caller should not see.
    /// Turn it on for services whose callers are your own (tests, internal tools).
    pub fn expose_error_text(mut self, expose: bool) -> Self {
        self.expose_error_text = expose;
        self
    }

    /// Calls `hook` with each error and the status it is answered with, e.g. to log it:
    ///
    /// ```
    /// use backstop::http::ErrorToResponseLayer;
    /// use backstop::BoxError;
    /// use http::StatusCode;
    ///
    /// let layer = ErrorToResponseLayer::new().on_error(|err: &BoxError, status: StatusCode| {
    ///     if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
    ///         eprintln!("answered {status}: {err}");
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_error<H2>(self, hook: H2) -> ErrorToResponseLayer<H2> {
        ErrorToResponseLayer {
            expose_error_text: self.expose_error_text,
            on_error: hook,
        }
    }
}

impl<S, H: Clone> Layer<S> for ErrorToResponseLayer<H> {
    type Service = ErrorToResponse<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorToResponse::new(
            inner,
            HttpAnswer::new(self.expose_error_text, self.on_error.clone()),
        )
    }
}
