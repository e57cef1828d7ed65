use std::fmt;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::backpressure::Limiter;
use crate::lifo_queue::AdaptiveQueue;
use crate::metrics::{LittleMeter, LittleSnapshot};

/// What an admission controller measures, once per tick.
///
/// Return the measurement in the unit of the controller's setpoint (seconds for a delay), or
/// `None` when there is nothing to measure this tick (the controller then keeps its output).
/// A signal is sampled under the controller's lock, at most once per tick, so it may keep state
/// (a previous snapshot) behind a lock of its own.
pub trait Signal: Send + Sync + 'static {
    /// The measurement now.
    fn sample(&self, now: Instant) -> Option<f64>;
}

impl<S: Signal + ?Sized> Signal for Box<S> {
    fn sample(&self, now: Instant) -> Option<f64> {
        (**self).sample(now)
    }
}

impl<S: Signal + ?Sized> Signal for std::sync::Arc<S> {
    fn sample(&self, now: Instant) -> Option<f64> {
        (**self).sample(now)
    }
}

/// Queue delay, in seconds: how long the oldest waiter of a backpressure or LIFO queue has
/// waited (0 when nobody waits). The health figure of a queue, and the signal CoDel uses.
#[derive(Clone)]
pub struct QueueDelay {
    source: QueueSource,
}

#[derive(Clone)]
enum QueueSource {
    Backpressure(Limiter),
    Lifo(AdaptiveQueue),
}

impl QueueDelay {
    /// The oldest waiter's age in a [`BackpressureLayer`](crate::backpressure::BackpressureLayer)'s
    /// queue.
    pub fn of_limiter(limiter: &Limiter) -> Self {
        QueueDelay {
            source: QueueSource::Backpressure(limiter.clone()),
        }
    }

    /// The oldest waiter's age in a [`LifoQueueLayer`](crate::lifo_queue::LifoQueueLayer)'s queue.
    pub fn of_queue(queue: &AdaptiveQueue) -> Self {
        QueueDelay {
            source: QueueSource::Lifo(queue.clone()),
        }
    }
}

impl fmt::Debug for QueueDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.source {
            QueueSource::Backpressure(_) => "backpressure",
            QueueSource::Lifo(_) => "lifo_queue",
        };
        f.debug_struct("QueueDelay").field("of", &kind).finish()
    }
}

impl Signal for QueueDelay {
    fn sample(&self, _now: Instant) -> Option<f64> {
        let oldest = match &self.source {
            QueueSource::Backpressure(l) => l.oldest_wait(),
            QueueSource::Lifo(q) => q.oldest_wait(),
        };
        Some(oldest.map_or(0.0, |d| d.as_secs_f64()))
    }
}

/// Average concurrency since the last sample, from a [`LittleMeter`] (requests in flight,
/// averaged over the tick: Little's `L`). Divide by a capacity with
/// [`utilization`](Self::utilization) to steer to a target utilization instead.
#[derive(Debug)]
pub struct AverageConcurrency {
    meter: LittleMeter,
    capacity: Option<f64>,
    last: Mutex<Option<LittleSnapshot>>,
}

impl AverageConcurrency {
    /// Average requests in flight through `meter` since the previous sample.
    pub fn new(meter: &LittleMeter) -> Self {
        AverageConcurrency {
            meter: meter.clone(),
            capacity: None,
            last: Mutex::new(None),
        }
    }

    /// Reports the average concurrency divided by `capacity` (ignored unless finite and > 0).
    pub fn utilization(mut self, capacity: f64) -> Self {
        self.capacity = (capacity.is_finite() && capacity > 0.0).then_some(capacity);
        self
    }
}

impl Signal for AverageConcurrency {
    fn sample(&self, _now: Instant) -> Option<f64> {
        let now = self.meter.snapshot();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace(now)?;
        let report = now.since(&previous);
        if report.interval.is_zero() {
            return None;
        }
        Some(match self.capacity {
            Some(c) => report.average_concurrency / c,
            None => report.average_concurrency,
        })
    }
}

/// A [`Signal`] from a closure; see [`signal_fn`].
#[derive(Clone)]
pub struct SignalFn<F> {
    f: F,
}

/// Any closure `Fn(Instant) -> Option<f64>` as a [`Signal`]: a latency percentile from your
/// own tracker, a CPU figure, a queue length.
///
/// ```
/// use backstop::pid::{Signal, signal_fn};
/// let s = signal_fn(|_now| Some(0.25));
/// assert_eq!(s.sample(tokio::time::Instant::now()), Some(0.25));
/// ```
pub fn signal_fn<F>(f: F) -> SignalFn<F>
where
    F: Fn(Instant) -> Option<f64> + Send + Sync + 'static,
{
    SignalFn { f }
}

impl<F> fmt::Debug for SignalFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignalFn")
    }
}

impl<F> Signal for SignalFn<F>
where
    F: Fn(Instant) -> Option<f64> + Send + Sync + 'static,
{
    fn sample(&self, now: Instant) -> Option<f64> {
        (self.f)(now)
    }
}
