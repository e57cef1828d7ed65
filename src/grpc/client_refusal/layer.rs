use tower_layer::Layer;

use super::ClientRefusal;

/// Answers a gRPC client's own refusals and timeouts with the status a server would send, and
/// passes other errors through; see the [module docs](super).
///
/// ```
/// use backstop::grpc::ClientRefusalLayer;
/// use backstop::timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // The stack a `tonic::client::Grpc` (or a generated client) wraps; here the "channel" is
/// // slower than the call's 100 ms.
/// let stack = ServiceBuilder::new()
///     .layer(ClientRefusalLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_millis(100))?)
///     .service_fn(|_req: http::Request<()>| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, backstop::BoxError>(http::Response::new(String::new()))
///     });
/// let res = stack.oneshot(http::Request::new(())).await?;
/// assert_eq!(res.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED, not UNKNOWN
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRefusalLayer {
    _private: (),
}

impl ClientRefusalLayer {
    /// The layer (it has nothing to configure).
    pub fn new() -> Self {
        ClientRefusalLayer::default()
    }
}

impl<S> Layer<S> for ClientRefusalLayer {
    type Service = ClientRefusal<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientRefusal::new(inner)
    }
}
