use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

use crate::backpressure::{Limiter, QueueStats};
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

    /// A cheap reading of the signal at this very instant, in the same unit, for the request
    /// path: the controller calls it when its draw would refuse a request, and admits the
    /// request anyway while the reading is below its floor (the queue is short: refusing would
    /// only leave the server idle). `None`, the default, when the signal has no such reading;
    /// then the draw alone decides.
    fn instant(&self) -> Option<f64> {
        None
    }

    /// Whether the resource had slack from the previous [`sample`](Self::sample) to the last
    /// one: for [`QueueDelay`], nobody waits at the last sample and fewer than half of the
    /// requests let in since the previous one had to wait. The controller reads it right after
    /// each sample, and after such ticks it lets go of its shed fast (see
    /// [`idle_release`](super::AdmissionControllerBuilder::idle_release)): a server with slack
    /// through a whole tick is shedding work it could do. `None`, the default, when the signal
    /// cannot tell; the shed then unwinds at the integral's own pace.
    fn idle(&self) -> Option<bool> {
        None
    }
}

impl<S: Signal + ?Sized> Signal for Box<S> {
    fn sample(&self, now: Instant) -> Option<f64> {
        (**self).sample(now)
    }

    fn instant(&self) -> Option<f64> {
        (**self).instant()
    }

    fn idle(&self) -> Option<bool> {
        (**self).idle()
    }
}

impl<S: Signal + ?Sized> Signal for std::sync::Arc<S> {
    fn sample(&self, now: Instant) -> Option<f64> {
        (**self).sample(now)
    }

    fn instant(&self) -> Option<f64> {
        (**self).instant()
    }

    fn idle(&self) -> Option<bool> {
        (**self).idle()
    }
}

/// Queue delay, in seconds, of a [`backpressure`](crate::backpressure) or
/// [`lifo_queue`](crate::lifo_queue) queue, measured one of two ways:
///
/// - [`of_limiter`](Self::of_limiter) / [`of_queue`](Self::of_queue): the wait a request
///   arriving now can expect, by Little's law applied to the queue: requests waiting divided by
///   the rate at which the queue hands out slots (averaged over about a second; the larger of
///   the rate over all intervals and over those that began with a waiter, so that light load,
///   whose grant rate is the arrival rate, does not read as a slow drain). It moves as soon
///   as the queue grows or shrinks, so a controller sees the effect of its last decision at the
///   next tick. **The one to control with.**
/// - [`oldest_waiter`](Self::oldest_waiter): the age of the oldest waiter (0 when nobody waits),
///   the queue's health figure. It lags: after admission is cut, the head of the queue keeps
///   ageing until everyone admitted before the cut has been served, so the lag is the delay
///   itself, and a controller on it overshoots (the `pid_step` example measured it).
pub struct QueueDelay {
    source: QueueSource,
    estimate: Option<Mutex<RateState>>,
    /// The drain rate of the last sample (f64 bits; 0 before one is known), for
    /// [`instant`](Signal::instant) readings between samples.
    drain: AtomicU64,
    /// The queue's counts of requests let in and of requests that had to wait, at the last
    /// sample (`u64::MAX` before the first), and whether the queue was idle between the last
    /// two samples.
    admitted: AtomicU64,
    queued: AtomicU64,
    idle: AtomicBool,
}

#[derive(Clone)]
enum QueueSource {
    Backpressure(Limiter),
    Lifo(AdaptiveQueue),
}

#[derive(Debug, Default)]
struct RateState {
    /// The previous sample: when, grants so far, and how many were waiting.
    last: Option<(Instant, u64, usize)>,
    /// Grants per second, averaged; the first interval's rate as it is.
    rate: Option<f64>,
    /// Grants per second over the intervals that began with a waiter (the server saturated),
    /// averaged: the drain rate, which the overall rate understates at light load.
    busy_rate: Option<f64>,
    /// When `busy_rate` was last updated.
    busy_at: Option<Instant>,
}

/// The time constant of the grant-rate average.
const RATE_TAU: f64 = 1.0;

impl QueueDelay {
    /// The expected wait in a [`BackpressureLayer`](crate::backpressure::BackpressureLayer)'s
    /// queue: waiting / grant rate.
    pub fn of_limiter(limiter: &Limiter) -> Self {
        QueueDelay {
            source: QueueSource::Backpressure(limiter.clone()),
            estimate: Some(Mutex::default()),
            drain: AtomicU64::new(0),
            admitted: AtomicU64::new(u64::MAX),
            queued: AtomicU64::new(u64::MAX),
            idle: AtomicBool::new(false),
        }
    }

    /// The expected wait in a [`LifoQueueLayer`](crate::lifo_queue::LifoQueueLayer)'s queue:
    /// waiting / grant rate.
    pub fn of_queue(queue: &AdaptiveQueue) -> Self {
        QueueDelay {
            source: QueueSource::Lifo(queue.clone()),
            estimate: Some(Mutex::default()),
            drain: AtomicU64::new(0),
            admitted: AtomicU64::new(u64::MAX),
            queued: AtomicU64::new(u64::MAX),
            idle: AtomicBool::new(false),
        }
    }

    /// Measures the oldest waiter's age instead of the expected wait (see the type's doc for
    /// why that lags).
    pub fn oldest_waiter(mut self) -> Self {
        self.estimate = None;
        self
    }

    fn stats(&self) -> QueueStats {
        match &self.source {
            QueueSource::Backpressure(l) => l.stats(),
            QueueSource::Lifo(q) => q.stats(),
        }
    }
}

impl fmt::Debug for QueueDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.source {
            QueueSource::Backpressure(_) => "backpressure",
            QueueSource::Lifo(_) => "lifo_queue",
        };
        let how = if self.estimate.is_some() {
            "expected wait"
        } else {
            "oldest waiter"
        };
        f.debug_struct("QueueDelay")
            .field("of", &kind)
            .field("measures", &how)
            .finish()
    }
}

impl Signal for QueueDelay {
    fn sample(&self, now: Instant) -> Option<f64> {
        let stats = self.stats();
        // Idle: nobody waits now, and fewer than half of the requests let in since the last
        // sample had to wait (never idle at the first, which has nothing to compare with). A
        // queue held at a setpoint of a service time or more makes nearly every request wait
        // (Erlang's C formula: on 4 workers, 75% of them at 90% load, 17% at half load); over
        // real HTTP a server at half its capacity still makes a few wait, so "nobody" would
        // almost never be seen.
        let admitted_before = self.admitted.swap(stats.admitted, Relaxed);
        let queued_before = self.queued.swap(stats.queued, Relaxed);
        let idle = admitted_before != u64::MAX && stats.waiting == 0 && {
            let admitted = stats.admitted.saturating_sub(admitted_before);
            let queued = stats.queued.saturating_sub(queued_before);
            queued == 0 || 2 * queued < admitted
        };
        self.idle.store(idle, Relaxed);
        let oldest = stats.oldest_wait.map_or(0.0, |d| d.as_secs_f64());
        let Some(estimate) = &self.estimate else {
            return Some(oldest);
        };
        let mut state = estimate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, granted, waiting)) = state.last {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let rate = stats.admitted.saturating_sub(granted) as f64 / dt;
                // An average over time: the weight of the old figure decays with the time
                // since it was last updated, not with the number of updates.
                let average = |old: Option<f64>, since: f64| {
                    let alpha = since / (RATE_TAU + since);
                    Some(old.map_or(rate, |r| r + alpha * (rate - r)))
                };
                state.rate = average(state.rate, dt);
                if waiting > 0 {
                    // The busy rate is only measured while a queue stands: a figure from a
                    // burst long ago (light load) must not outweigh the first interval of a
                    // new overload, when the controller needs the signal most.
                    let since = state
                        .busy_at
                        .map_or(dt, |t| now.saturating_duration_since(t).as_secs_f64());
                    state.busy_rate = average(state.busy_rate, since);
                    state.busy_at = Some(now);
                }
            }
        }
        state.last = Some((now, stats.admitted, stats.waiting));
        // Both rates understate the drain rate (a queue that empties within an interval stops
        // the grants), so the larger is the better estimate. At light load the overall rate is
        // the arrival rate, and a short burst would read as a long wait without the busy rate.
        let drain = state
            .rate
            .into_iter()
            .chain(state.busy_rate)
            .fold(0.0, f64::max);
        self.drain.store(drain.to_bits(), Relaxed);
        if stats.waiting == 0 {
            Some(0.0)
        } else if drain > f64::EPSILON {
            Some(stats.waiting as f64 / drain)
        } else {
            // Nothing granted lately (a stuck server, or the first sample): the head's age is
            // the best figure there is.
            Some(oldest)
        }
    }

    /// Waiting now over the drain rate of the last sample (0 when nobody waits); the oldest
    /// waiter's age for [`oldest_waiter`](Self::oldest_waiter).
    fn instant(&self) -> Option<f64> {
        let stats = self.stats();
        if self.estimate.is_none() {
            return Some(stats.oldest_wait.map_or(0.0, |d| d.as_secs_f64()));
        }
        if stats.waiting == 0 {
            return Some(0.0);
        }
        let drain = f64::from_bits(self.drain.load(Relaxed));
        (drain > f64::EPSILON).then(|| stats.waiting as f64 / drain)
    }

    /// True when nobody waits at the last sample and fewer than half of the requests let in
    /// since the previous one had to wait: the queue had slack through the tick.
    fn idle(&self) -> Option<bool> {
        Some(self.idle.load(Relaxed))
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
