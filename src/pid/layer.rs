use tower_layer::Layer;

use super::admission::AdmissionController;
use super::service::Admission;
use crate::context::{ByCriticality, Criticality, SameCriticality};

/// Admits each request with the [`AdmissionController`]'s current probability; refuses the
/// others at once with [`Overloaded`](crate::Overloaded)`{ reason: AdmissionDenied }`.
///
/// Every service the layer makes shares the one controller. By default every request is
/// alike; [`by_criticality`](Self::by_criticality) makes it refuse the lowest
/// [`Criticality`] first (the shed fraction fills `Sheddable` before it touches
/// `SheddablePlus`, and so on).
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
pub struct AdmissionLayer<K = SameCriticality> {
    controller: AdmissionController,
    criticality: K,
}

impl AdmissionLayer {
    /// A layer deciding by `controller`, every request alike.
    pub fn new(controller: AdmissionController) -> Self {
        AdmissionLayer {
            controller,
            criticality: SameCriticality,
        }
    }
}

impl<K> AdmissionLayer<K> {
    /// Refuses the lowest criticality first. A request's level is its own tag
    /// ([`HasCriticality`](crate::context::HasCriticality)), else its scope's, else `default`.
    ///
    /// ```
    /// use backstop::backpressure::BackpressureLayer;
    /// use backstop::context::Criticality;
    /// use backstop::pid::{AdmissionController, AdmissionLayer, QueueDelay};
    ///
    /// # fn main() -> Result<(), backstop::BoxError> {
    /// let queue = BackpressureLayer::new("api", 8, 64)?;
    /// let controller = AdmissionController::builder("api", QueueDelay::of_limiter(queue.limiter()))
    ///     .build()?;
    /// // Untagged requests count as sheddable: only callers that say so are protected.
    /// let layer = AdmissionLayer::new(controller).by_criticality(Criticality::Sheddable);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn by_criticality(self, default: Criticality) -> AdmissionLayer<ByCriticality> {
        self.criticality(ByCriticality::new(default))
    }

    /// Reads each request's level with `criticality` (a
    /// [`CriticalityOf`](crate::context::CriticalityOf)).
    pub fn criticality<K2>(self, criticality: K2) -> AdmissionLayer<K2> {
        AdmissionLayer {
            controller: self.controller,
            criticality,
        }
    }

    /// The shared controller.
    pub fn controller(&self) -> &AdmissionController {
        &self.controller
    }
}

impl<S, K: Clone> Layer<S> for AdmissionLayer<K> {
    type Service = Admission<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission::with_criticality(inner, self.controller.clone(), self.criticality.clone())
    }
}
