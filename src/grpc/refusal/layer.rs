use tower_layer::Layer;

use super::ErrorToGrpc;

/// Turns every error of the service below into a trailers-only gRPC answer, so the stack's
/// error type is `Infallible`; see the [module docs](super).
///
/// `H` is the [`OnGrpcError`](super::OnGrpcError) hook, `()` (none) by default.
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
        ErrorToGrpc::new(inner, self.on_error.clone())
    }
}
