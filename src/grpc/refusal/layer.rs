use tower_layer::Layer;

use super::{ErrorToGrpc, GrpcAnswer};

/// Turns every error of the service below into a trailers-only gRPC answer, so the stack's
/// error type is `Infallible`; see the [module docs](super).
///
/// `H` is the [`OnGrpcError`](super::OnGrpcError) hook, `()` (none) by default.
///
/// ```
/// use backstop::grpc::ErrorToGrpcLayer;
/// use backstop::{OverloadReason, Overloaded};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ErrorToGrpcLayer::new())
///     .service_fn(|_req: http::Request<()>| async {
///         let full = Overloaded::new(OverloadReason::QueueFull).with_retry_after(Duration::from_millis(200));
///         Err::<http::Response<String>, _>(backstop::BoxError::from(full))
///     });
/// // Trailers-only: HTTP 200 with the gRPC status (and the pushback) in the headers.
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["grpc-status"], "14"); // UNAVAILABLE: the server is full
/// assert_eq!(res.headers()["grpc-retry-pushback-ms"], "200");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorToGrpcLayer<H = ()> {
    on_error: H,
}

impl ErrorToGrpcLayer {
    /// Refusals become `RESOURCE_EXHAUSTED` or `UNAVAILABLE` with `grpc-retry-pushback-ms`,
    /// timeouts `DEADLINE_EXCEEDED`, other errors `UNKNOWN`.
    pub fn new() -> Self {
        ErrorToGrpcLayer { on_error: () }
    }
}

impl<H> ErrorToGrpcLayer<H> {
    /// Calls `hook` with each error and the code it is answered with.
    pub fn on_error<H2>(self, hook: H2) -> ErrorToGrpcLayer<H2> {
        ErrorToGrpcLayer { on_error: hook }
    }
}

impl<S, H: Clone> Layer<S> for ErrorToGrpcLayer<H> {
    type Service = ErrorToGrpc<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorToGrpc::new(inner, GrpcAnswer::new(self.on_error.clone()))
    }
}
