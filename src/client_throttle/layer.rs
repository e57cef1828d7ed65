use tower_layer::Layer;

use super::{ClientThrottle, ClientThrottleService};
use crate::classify::DefaultClassifier;

/// Refuses requests locally, before they are sent, in proportion to how many the server has
/// been refusing: the SRE book's adaptive client throttling. See the [module docs](super).
///
/// Every service the layer makes shares the one [`ClientThrottle`].
///
/// ```
/// use backstop::client_throttle::{ClientThrottle, ClientThrottleLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let throttle = ClientThrottle::new("backend"); // K = 2 over 2 minutes
/// let svc = ServiceBuilder::new()
///     .layer(ClientThrottleLayer::new(throttle.clone()))
///     .service_fn(|_req: ()| async { Ok::<_, backstop::BoxError>("ok") });
/// assert_eq!(svc.oneshot(()).await?, "ok");
/// assert_eq!(throttle.counts(), (1, 1)); // one request, one accept
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientThrottleLayer<C = DefaultClassifier> {
    throttle: ClientThrottle,
    classifier: C,
}

impl ClientThrottleLayer {
    /// A layer deciding by `throttle`, reading answers with the [`DefaultClassifier`]: an
    /// overload (429, a 503 with `Retry-After`, gRPC's RESOURCE_EXHAUSTED where the classifier
    /// reads gRPC, any backstop refusal) is not an accept; anything else is.
    pub fn new(throttle: ClientThrottle) -> Self {
        ClientThrottleLayer {
            throttle,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> ClientThrottleLayer<C> {
    /// The same layer reading answers with `classifier`: only its `Outcome::Overload` counts
    /// as a refusal by the server.
    pub fn classifier<C2>(self, classifier: C2) -> ClientThrottleLayer<C2> {
        ClientThrottleLayer {
            throttle: self.throttle,
            classifier,
        }
    }

    /// The shared throttle.
    pub fn throttle(&self) -> &ClientThrottle {
        &self.throttle
    }
}

impl<S, C: Clone> Layer<S> for ClientThrottleLayer<C> {
    type Service = ClientThrottleService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientThrottleService::new(inner, self.throttle.clone(), self.classifier.clone())
    }
}
