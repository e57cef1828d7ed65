use metrics::counter;
use tower_layer::Layer;

use super::{DEFAULT_REPLAY_LIMIT, ReplayBodyService};
use crate::error::ConfigError;
use crate::metrics::names;

/// Wraps every request's body in a [`ReplayBody`](super::ReplayBody), so the retry and hedge
/// layers below can send it again; see the [module docs](super).
///
/// Put it above [`RetryLayer`](crate::retry::RetryLayer) and
/// [`HedgeLayer`](crate::hedge::HedgeLayer):
///
/// ```
/// use backstop::http::ReplayBodyLayer;
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), backstop::ConfigError> {
/// let layer = ReplayBodyLayer::builder("upload").limit(16 * 1024).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|req: http::Request<backstop::http::ReplayBody<String>>| async move {
///         Ok::<_, backstop::BoxError>(http::Response::new(req.into_body().is_replayable()))
///     });
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReplayBodyLayer {
    limit: usize,
    too_large: metrics::Counter,
    body_error: metrics::Counter,
}

impl ReplayBodyLayer {
    /// A layer keeping up to [`DEFAULT_REPLAY_LIMIT`] (64 KiB) of each body; `name` labels
    /// `backstop_replay_abandoned_total`.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name).build_infallible()
    }

    /// Starts a builder with the default limit.
    pub fn builder(name: impl Into<String>) -> ReplayBodyLayerBuilder {
        ReplayBodyLayerBuilder {
            name: name.into(),
            limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// The most bytes of a body kept for replay.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl<S> Layer<S> for ReplayBodyLayer {
    type Service = ReplayBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayBodyService::new(
            inner,
            self.limit,
            self.too_large.clone(),
            self.body_error.clone(),
        )
    }
}

/// Builds a [`ReplayBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReplayBodyLayerBuilder {
    name: String,
    limit: usize,
}

impl ReplayBodyLayerBuilder {
    /// The most bytes of a body kept for replay (default 64 KiB). A larger body is sent once
    /// and not retried or hedged; 0 keeps nothing, so only empty bodies are replayed.
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }

    /// The layer. Every limit is valid; the `Result` leaves room for checks to come.
    pub fn build(self) -> Result<ReplayBodyLayer, ConfigError> {
        Ok(self.build_infallible())
    }

    fn build_infallible(self) -> ReplayBodyLayer {
        names::describe_replay();
        let series = |reason: &'static str| {
            counter!(
                names::REPLAY_ABANDONED,
                names::NAME_LABEL => self.name.clone(),
                names::REASON_LABEL => reason
            )
        };
        let too_large = series("too_large");
        let body_error = series("body_error");
        // Registered now, so a zero is reported.
        too_large.absolute(0);
        body_error.absolute(0);
        ReplayBodyLayer {
            limit: self.limit,
            too_large,
            body_error,
        }
    }
}
