use tower_layer::Layer;

use super::admission::AdmissionController;
use super::service::Admission;

/// Admits each request with the [`AdmissionController`]'s current probability; refuses the
/// others at once with [`Overloaded`](crate::Overloaded)`{ reason: AdmissionDenied }`.
///
/// Every service the layer makes shares the one controller.
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
