use tower_layer::Layer;

use super::admission::AdmissionController;
use super::service::Admission;

/// Admits each request with the [`AdmissionController`]'s current probability; refuses the
/// others at once with [`Overloaded`](crate::Overloaded)`{ reason: AdmissionDenied }`.
///
/// Every service the layer makes shares the one controller.
///
/// ```
/// use backstop::backpressure::BackpressureLayer;
/// use backstop::pid::{AdmissionController, AdmissionLayer, QueueDelay};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let queue = BackpressureLayer::new("api", 8, 64)?;
/// // Hold the expected queueing delay at 20 ms.
/// let controller = AdmissionController::builder("api", QueueDelay::of_limiter(queue.limiter()))
///     .setpoint(0.020)
///     .build()?;
/// let svc = ServiceBuilder::new()
///     .layer(AdmissionLayer::new(controller))
///     .layer(queue)
///     .service_fn(|_req: ()| async { Ok::<_, backstop::BoxError>("ok") });
/// assert_eq!(svc.oneshot(()).await?, "ok"); // an idle server admits everyone
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    controller: AdmissionController,
}

impl AdmissionLayer {
    /// A layer deciding by `controller`.
    pub fn new(controller: AdmissionController) -> Self {
        AdmissionLayer { controller }
    }

    /// The shared controller.
    pub fn controller(&self) -> &AdmissionController {
        &self.controller
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission::new(inner, self.controller.clone())
    }
}
