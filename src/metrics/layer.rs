use tower_layer::Layer;

use super::{Little, LittleMeter};
use crate::classify::ErrorClassifier;

/// Measures every request that passes with a [`LittleMeter`]; see the [module docs](super).
///
/// Outcomes are read through a [`Classify`](crate::classify::Classify) (by default
/// [`ErrorClassifier`]; use [`HttpClassifier`](crate::classify::HttpClassifier) to count 429 and
/// 503 answers as overloads).
#[derive(Debug, Clone)]
pub struct LittleLayer<C = ErrorClassifier> {
    meter: LittleMeter,
    classifier: C,
}

impl LittleLayer {
    /// A layer recording into `meter`, which every service it makes shares.
    pub fn new(meter: LittleMeter) -> Self {
        LittleLayer {
            meter,
            classifier: ErrorClassifier,
        }
    }
}

impl<C> LittleLayer<C> {
    /// Reads outcomes with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> LittleLayer<C2> {
        LittleLayer {
            meter: self.meter,
            classifier,
        }
    }

    /// The shared meter.
    pub fn meter(&self) -> &LittleMeter {
        &self.meter
    }
}

impl<S, C: Clone> Layer<S> for LittleLayer<C> {
    type Service = Little<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Little::new(inner, self.meter.clone(), self.classifier.clone())
    }
}
