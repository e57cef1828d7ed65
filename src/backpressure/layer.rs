use std::marker::PhantomData;

use tower_layer::Layer;

use super::{Backpressure, Limiter, UntilResponse};
use crate::context::{ByCriticality, Criticality, SameCriticality};
use crate::error::{ConfigError, check};

/// Bounds the requests in flight and the requests waiting, and refuses the rest at once with
/// [`Overloaded`](crate::Overloaded)`{ reason: QueueFull }`; see the [module docs](super).
///
/// Every service this layer makes shares one [`Limiter`].
///
/// ```
/// use backstop::backpressure::BackpressureLayer;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // One at a time, none waiting: a second request while one runs is refused at once.
/// let mut svc = ServiceBuilder::new()
///     .layer(BackpressureLayer::new("api", 1, 0)?)
///     .service_fn(|_req: ()| async {
///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///         Ok::<_, backstop::BoxError>("done")
///     });
/// let first = svc.ready().await?.call(());
/// let second = svc.ready().await?.call(());
/// assert!(backstop::is_overload(second.await.unwrap_err().as_ref()));
/// assert_eq!(first.await?, "done");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BackpressureLayer<H = UntilResponse, K = SameCriticality> {
    limiter: Limiter,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl BackpressureLayer {
    /// A layer allowing `max_in_flight` requests at once and `max_waiting` more in line;
    /// `name` labels its series.
    pub fn new(
        name: impl Into<String>,
        max_in_flight: usize,
        max_waiting: usize,
    ) -> Result<Self, ConfigError> {
        Self::builder(name)
            .max_in_flight(max_in_flight)
            .max_waiting(max_waiting)
            .build()
    }

    /// Starts a builder whose series carry `name`, with the defaults: 64 in flight, 64 waiting.
    pub fn builder(name: impl Into<String>) -> BackpressureLayerBuilder {
        BackpressureLayerBuilder {
            name: name.into(),
            max_in_flight: 64,
            max_waiting: 64,
            criticality: SameCriticality,
            _hold: PhantomData,
        }
    }
}

impl<H, K> BackpressureLayer<H, K> {
    /// The shared limiter, to read its figures.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S, H, K: Clone> Layer<S> for BackpressureLayer<H, K> {
    type Service = Backpressure<S, H, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Backpressure::new(inner, self.limiter.clone(), self.criticality.clone())
    }
}

/// Builds a [`BackpressureLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct BackpressureLayerBuilder<H = UntilResponse, K = SameCriticality> {
    name: String,
    max_in_flight: usize,
    max_waiting: usize,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl<H, K> BackpressureLayerBuilder<H, K> {
    /// Orders a full line by [`Criticality`]: a request that finds it full, while a request of
    /// a lower level waits, takes that one's place (the oldest waiter of the lowest such level
    /// is refused with [`Overloaded`](crate::Overloaded)`{ reason: Shed }`), so a full line
    /// never refuses a critical request while it holds a sheddable one. A request's level is its
    /// own tag, else its [scope's](crate::context), else `default`. Without it, every request
    /// is alike and a full line refuses the newcomer. The order within the line stays
    /// arrival order.
    pub fn by_criticality(
        self,
        default: Criticality,
    ) -> BackpressureLayerBuilder<H, ByCriticality> {
        BackpressureLayerBuilder {
            name: self.name,
            max_in_flight: self.max_in_flight,
            max_waiting: self.max_waiting,
            criticality: ByCriticality::new(default),
            _hold: PhantomData,
        }
    }

    /// The most requests that may hold a slot at once. At least 1 (up to `usize::MAX`). Default
    /// 64.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// The most requests that may wait for a slot; 0 means none wait, and any value up to
    /// `usize::MAX` is accepted (the wait list grows only as requests arrive). Default 64.
    pub fn max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Keeps each slot until the HTTP response body has ended, not only until the response
    /// head is returned. Use it on HTTP servers.
    #[cfg(feature = "http")]
    pub fn hold_until_body_end(self) -> BackpressureLayerBuilder<super::UntilBodyEnd, K> {
        BackpressureLayerBuilder {
            name: self.name,
            max_in_flight: self.max_in_flight,
            max_waiting: self.max_waiting,
            criticality: self.criticality,
            _hold: PhantomData,
        }
    }

    /// Checks the values, registers the metric series, and builds the layer.
    pub fn build(self) -> Result<BackpressureLayer<H, K>, ConfigError> {
        let max_in_flight = check(
            "max_in_flight",
            self.max_in_flight,
            |&c| c >= 1,
            "at least 1",
        )?;
        Ok(BackpressureLayer {
            limiter: Limiter::new(max_in_flight, self.max_waiting, &self.name),
            criticality: self.criticality,
            _hold: PhantomData,
        })
    }
}
