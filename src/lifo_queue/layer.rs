use std::marker::PhantomData;
use std::time::Duration;

use tower_layer::Layer;

use super::{AdaptiveQueue, LifoQueue};
use crate::backpressure::UntilResponse;
use crate::backpressure::gate::{Config, Shedding};
use crate::context::{ByCriticality, Criticality, SameCriticality};
use crate::error::{ConfigError, check, clamp_forever};
use crate::timeout::{FromRequest, NoDeadline};

/// A wait queue in front of a concurrency limit that serves oldest-first while healthy,
/// newest-first once behind, and sheds stale waiters; see the [module docs](super).
///
/// Every service this layer makes shares one [`AdaptiveQueue`].
///
/// ```
/// use backstop::lifo_queue::LifoQueueLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // 4 at a time, 64 waiting; newest first once the line has not emptied for 100 ms.
/// let queue = LifoQueueLayer::builder("api").max_in_flight(4).max_waiting(64).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(queue)
///     .service_fn(|req: http::Request<()>| async move { Ok::<_, backstop::BoxError>(req.uri().path().len()) });
/// assert_eq!(svc.oneshot(http::Request::new(())).await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LifoQueueLayer<H = UntilResponse, D = FromRequest, K = SameCriticality> {
    queue: AdaptiveQueue,
    deadlines: D,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl LifoQueueLayer {
    /// A layer allowing `max_in_flight` requests at once, with the defaults for everything else
    /// (see [`LifoQueueLayer::builder`]); `name` labels its series.
    pub fn new(name: impl Into<String>, max_in_flight: usize) -> Result<Self, ConfigError> {
        Self::builder(name).max_in_flight(max_in_flight).build()
    }

    /// Starts a builder whose series carry `name`, with the defaults: 64 in flight, 1024 waiting,
    /// target 5 ms, interval 100 ms, no sideline, deadlines read from the request.
    pub fn builder(name: impl Into<String>) -> LifoQueueLayerBuilder {
        LifoQueueLayerBuilder {
            name: name.into(),
            max_in_flight: 64,
            max_waiting: 1024,
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
            sideline: None,
            deadlines: FromRequest,
            criticality: SameCriticality,
            _hold: PhantomData,
        }
    }
}

impl<H, D, K> LifoQueueLayer<H, D, K> {
    /// The shared queue, to read its figures.
    pub fn queue(&self) -> &AdaptiveQueue {
        &self.queue
    }
}

impl<S, H, D: Clone, K: Clone> Layer<S> for LifoQueueLayer<H, D, K> {
    type Service = LifoQueue<S, H, D, K>;

    fn layer(&self, inner: S) -> Self::Service {
        LifoQueue::new(
            inner,
            self.queue.clone(),
            self.deadlines.clone(),
            self.criticality.clone(),
        )
    }
}

/// Builds a [`LifoQueueLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct LifoQueueLayerBuilder<H = UntilResponse, D = FromRequest, K = SameCriticality> {
    name: String,
    max_in_flight: usize,
    max_waiting: usize,
    target: Duration,
    interval: Duration,
    sideline: Option<Duration>,
    deadlines: D,
    criticality: K,
    _hold: PhantomData<fn() -> H>,
}

impl<H, D, K> LifoQueueLayerBuilder<H, D, K> {
    /// Orders the queue by [`Criticality`] when it is full: a request that finds it full, while
    /// a request of a lower level waits, takes that one's place (the oldest waiter of the lowest
    /// such level is shed, sideline first), so a full queue never refuses a critical request
    /// while it holds a sheddable one. A request's level is its own tag, else its
    /// [scope's](crate::context), else `default`. Without it, every request is alike.
    pub fn by_criticality(
        self,
        default: Criticality,
    ) -> LifoQueueLayerBuilder<H, D, ByCriticality> {
        LifoQueueLayerBuilder {
            name: self.name,
            max_in_flight: self.max_in_flight,
            max_waiting: self.max_waiting,
            target: self.target,
            interval: self.interval,
            sideline: self.sideline,
            deadlines: self.deadlines,
            criticality: ByCriticality::new(default),
            _hold: PhantomData,
        }
    }

    /// The most requests that may hold a slot at once. At least 1. Default 64.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// The most requests that may wait (main list and sideline together); one more is refused
    /// with `QueueFull`. Any value, 0 (none wait) to `usize::MAX` (the CoDel bound alone limits
    /// the queue). Default 1024. (The CoDel bound usually sheds long before this.)
    pub fn max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// The longest a waiter may wait once the queue is behind. Greater than zero and at most
    /// `interval`; past a century (up to `Duration::MAX`) it is kept as a century. Default 5 ms.
    pub fn target(mut self, target: Duration) -> Self {
        self.target = target;
        self
    }

    /// How long the queue must stay non-empty before it counts as behind (and switches to LIFO);
    /// also the longest a waiter may wait while it is not behind. Greater than zero; past a
    /// century (up to `Duration::MAX`, "never behind") it is kept as a century. Default 100 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Turns sidelining on: a waiter past the CoDel bound moves to a low-priority list, served
    /// (newest first) only when the main list is empty, and is shed once it has waited
    /// `max_total_wait` in all (or its deadline passes). Greater than `interval`; past a century
    /// it is kept as a century. Default off: such waiters are shed at once.
    pub fn sideline(mut self, max_total_wait: Duration) -> Self {
        self.sideline = Some(max_total_wait);
        self
    }

    /// Keeps each slot until the HTTP response body has ended, not only until the response
    /// head is returned. Use it on HTTP servers.
    #[cfg(feature = "http")]
    pub fn hold_until_body_end(
        self,
    ) -> LifoQueueLayerBuilder<crate::backpressure::UntilBodyEnd, D, K> {
        self.with_types(|same| same)
    }

    /// Ignores request deadlines, so the layer accepts request types without
    /// [`HasDeadline`](crate::timeout::HasDeadline); only the CoDel bound sheds.
    pub fn ignore_deadlines(self) -> LifoQueueLayerBuilder<H, NoDeadline, K> {
        self.with_types(|_| NoDeadline)
    }

    fn with_types<H2, D2>(
        self,
        deadlines: impl FnOnce(D) -> D2,
    ) -> LifoQueueLayerBuilder<H2, D2, K> {
        LifoQueueLayerBuilder {
            name: self.name,
            max_in_flight: self.max_in_flight,
            max_waiting: self.max_waiting,
            target: self.target,
            interval: self.interval,
            sideline: self.sideline,
            deadlines: deadlines(self.deadlines),
            criticality: self.criticality,
            _hold: PhantomData,
        }
    }

    /// Checks the values, registers the metric series, and builds the layer.
    pub fn build(self) -> Result<LifoQueueLayer<H, D, K>, ConfigError> {
        let limit = check(
            "max_in_flight",
            self.max_in_flight,
            |&c| c >= 1,
            "at least 1",
        )?;
        let interval = check(
            "interval",
            self.interval,
            |d| !d.is_zero(),
            "greater than zero",
        )?;
        let target = check(
            "target",
            self.target,
            |d| !d.is_zero() && *d <= interval,
            "greater than zero and at most `interval`",
        )?;
        let sideline = match self.sideline {
            Some(s) => Some(check(
                "sideline",
                s,
                |d| *d > interval,
                "greater than `interval`",
            )?),
            None => None,
        };
        // Checked as given, then kept at most a century: the gate adds them to instants.
        let config = Config {
            limit,
            max_waiting: self.max_waiting,
            shedding: Some(Shedding {
                target: clamp_forever(target),
                interval: clamp_forever(interval),
                sideline: sideline.map(clamp_forever),
            }),
        };
        Ok(LifoQueueLayer {
            queue: AdaptiveQueue::new(config, &self.name),
            deadlines: self.deadlines,
            criticality: self.criticality,
            _hold: PhantomData,
        })
    }
}
