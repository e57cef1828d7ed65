use tower_layer::Layer;

use super::{Little, LittleMeter};
use crate::classify::DefaultClassifier;

/// Measures every request that passes with a [`LittleMeter`]; see the [module docs](super).
///
/// The meter reads its own [`Clock`](crate::clock::Clock); in a test, build it after
/// `tokio::time::pause()` (or give it [`Clock::tokio`](crate::clock::Clock::tokio)), or it keeps
/// real time and the test's `advance` does not move it.
///
/// Outcomes are read through a [`Classify`](crate::classify::Classify): by default
/// [`DefaultClassifier`], so an `http::Response` counts as HTTP says (a 429, or a 503 with
/// `Retry-After`, is an overload; a 5xx an error).
///
/// ```
/// use backstop::metrics::{LittleLayer, LittleMeter};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // Install your metrics recorder first; then build the meter.
/// let meter = LittleMeter::builder("api").capacity(8.0).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(LittleLayer::new(meter.clone()))
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, backstop::BoxError>(http::Response::new(())) });
/// svc.oneshot(http::Request::new(())).await?;
/// assert_eq!(meter.in_flight(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LittleLayer<C = DefaultClassifier> {
    meter: LittleMeter,
    classifier: C,
}

impl LittleLayer {
    /// A layer recording into `meter`, which every service it makes shares.
    pub fn new(meter: LittleMeter) -> Self {
        LittleLayer {
            meter,
            classifier: DefaultClassifier,
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
