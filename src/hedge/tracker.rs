use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::error::{ConfigError, check};

/// Latencies are kept in microseconds, from 1 µs to 100 s (longer ones count as 100 s), to three
/// significant figures: 12,345 µs is told apart from 12,357 µs. (tower's `Hedge` rounds every
/// latency up to a whole millisecond, which matters when the usual latency is a few ms.)
const LOWEST_MICROS: u64 = 1;
const HIGHEST_MICROS: u64 = 100_000_000;
const SIGFIG: u8 = 3;
/// The current window is split over a few histograms, so concurrent recorders rarely meet on a
/// lock: each takes the first free one (`try_lock`) and blocks only when all are busy.
const SHARDS: usize = 4;
/// The cached percentile is refreshed after this many records at most (and at every rotation).
const REFRESH_EVERY: u64 = 1024;
/// `cached` holds this while the tracker has too few samples to answer.
const NO_ANSWER: u64 = u64::MAX;

type Histo = Histogram<u32>;

fn new_histogram() -> Histo {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Latency percentiles over a sliding period, for deciding when a request is late.
///
/// Records go into the current window; when a window ends it becomes the previous one and a new
/// one starts, so answers always cover between one and two windows of the most recent traffic and
/// an old slow spell is forgotten. The tracker answers nothing at all until the windows it reads
/// hold at least `min_samples` latencies: a hedge delay taken from five samples would be noise.
///
/// The percentile the hedge layer reads ([`watched`](LatencyTrackerBuilder::watch)) is cached in
/// an atomic and read lock-free on every request. Recording takes one of a few sharded histogram
/// locks with `try_lock` (held for one increment, never across an `.await`); merging the shards
/// for a fresh answer happens on a slow path at each rotation and every 1,024 records (sooner
/// while the windows hold few samples: whenever an eighth of them is new).
///
/// A cheap [`Clone`] handle: clones share one set of windows, so several layers (or a layer and
/// your dashboard) can read the same latencies.
///
/// ```
/// use std::time::Duration;
/// use backstop::hedge::LatencyTracker;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::ConfigError> {
/// let tracker = LatencyTracker::builder().min_samples(100).build()?;
/// for i in 0..99 {
///     tracker.record(Duration::from_micros(10_000 + i));
/// }
/// assert_eq!(tracker.watched(), None); // 99 samples: not enough to answer
/// tracker.record(Duration::from_micros(12_345));
/// // The 95th of 100 samples is 10,094 µs; kept to 3 significant figures (8 µs steps here),
/// // rounded up.
/// let p95 = tracker.watched().unwrap().as_micros();
/// assert!((10_094..=10_102).contains(&p95), "{p95}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LatencyTracker {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Histo>]>,
    next_shard: AtomicUsize,
    /// Records in the current window (all shards).
    current_len: AtomicU64,
    since_refresh: AtomicU64,
    slow: Mutex<Slow>,
    epoch: Instant,
    /// When the current window started, in nanoseconds since `epoch`.
    window_start_ns: AtomicU64,
    window_ns: u64,
    min_samples: u64,
    quantile: f64,
    /// The watched percentile in microseconds, or [`NO_ANSWER`].
    cached: AtomicU64,
    /// Samples in the previous window (read lock-free to know when to refresh early).
    previous_len: AtomicU64,
}

/// The slow-path state: the previous window, and a scratch histogram for merged answers.
struct Slow {
    previous: Histo,
    merged: Histo,
}

impl fmt::Debug for LatencyTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("window", &Duration::from_nanos(self.inner.window_ns))
            .field("min_samples", &self.inner.min_samples)
            .field("quantile", &self.inner.quantile)
            .field("watched", &self.watched())
            .finish()
    }
}

impl LatencyTracker {
    /// Starts a builder with the defaults: 10 s windows, 100 samples before any answer, watching
    /// the 95th percentile.
    pub fn builder() -> LatencyTrackerBuilder {
        LatencyTrackerBuilder {
            window: Duration::from_secs(10),
            min_samples: 100,
            quantile: 0.95,
        }
    }

    /// A tracker with the defaults.
    pub fn new() -> Self {
        Self::builder().build().expect("defaults are valid")
    }

    /// Records one latency (to the microsecond; longer than 100 s counts as 100 s).
    pub fn record(&self, latency: Duration) {
        let inner = &*self.inner;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let micros = micros.clamp(LOWEST_MICROS, HIGHEST_MICROS);
        inner.with_shard(|h| h.saturating_record(micros));
        let len = inner.current_len.fetch_add(1, Relaxed) + 1;
        let since = inner.since_refresh.fetch_add(1, Relaxed) + 1;
        let starved = inner.cached.load(Relaxed) == NO_ANSWER
            && len + inner.previous_len.load(Relaxed) >= inner.min_samples;
        // Refresh after 1,024 records, or sooner while the windows are thin (an eighth new
        // data), so a quiet service's delay does not lag a whole window behind.
        let fresh_enough =
            since < REFRESH_EVERY && since * 8 < len + inner.previous_len.load(Relaxed);
        if !fresh_enough || starved || inner.rotation_due(Instant::now()) {
            inner.refresh(Instant::now());
        }
    }

    /// Records a latency known only to be longer than `at_least`: a copy cancelled after
    /// `at_least` because the other copy answered first. It is recorded as twice that long.
    ///
    /// Recording only the time it had run would drag the percentile down: once the delay is
    /// too short, every slow copy is cancelled just after it, and the tail is never seen again
    /// (tower's `Hedge`, which leaves cancelled copies out altogether, hedges more than its
    /// percentile says for this reason). A cancelled copy ran past the delay, so at twice its
    /// running time it still counts above the delay, which is all the percentile needs when the
    /// delay is right; when the delay is too short, the percentile lands among these samples and
    /// the next delay is at least twice the last: it climbs back geometrically. Percentiles far
    /// above the delay read high because of it.
    pub fn record_at_least(&self, at_least: Duration) {
        self.record(at_least.saturating_mul(2));
    }

    /// The watched percentile (set by [`LatencyTrackerBuilder::watch`], default p95), read
    /// lock-free; `None` until the windows hold `min_samples` latencies.
    pub fn watched(&self) -> Option<Duration> {
        match self.inner.cached.load(Relaxed) {
            NO_ANSWER => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Any percentile (`quantile` in `0.0..=1.0`) over the current and previous windows, computed
    /// now (slow path: merges the windows under a lock); `None` with too few samples or a
    /// quantile out of range.
    pub fn percentile(&self, quantile: f64) -> Option<Duration> {
        if !(0.0..=1.0).contains(&quantile) {
            return None;
        }
        let inner = &*self.inner;
        let mut slow = inner.slow.lock().unwrap_or_else(|p| p.into_inner());
        inner.rotate_and_merge(&mut slow, Instant::now());
        inner
            .answer(&slow.merged, quantile)
            .map(Duration::from_micros)
    }

    /// How many latencies the tracker reads from now (current and previous window).
    pub fn samples(&self) -> u64 {
        self.inner.current_len.load(Relaxed) + self.inner.previous_len.load(Relaxed)
    }

    /// The samples needed before the tracker answers.
    pub fn min_samples(&self) -> u64 {
        self.inner.min_samples
    }
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    fn with_shard(&self, f: impl FnOnce(&mut Histo)) {
        let first = self.next_shard.fetch_add(1, Relaxed);
        for i in 0..SHARDS {
            match self.shards[(first + i) % SHARDS].try_lock() {
                Ok(mut h) => return f(&mut h),
                Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => continue,
            }
        }
        let mut h = self.shards[first % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut h)
    }

    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn rotation_due(&self, now: Instant) -> bool {
        self.now_ns(now)
            .saturating_sub(self.window_start_ns.load(Relaxed))
            >= self.window_ns
    }

    /// Recomputes the cached percentile; skips when another thread is already at it.
    fn refresh(&self, now: Instant) {
        let mut slow = match self.slow.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.rotate_and_merge(&mut slow, now);
        let answer = self.answer(&slow.merged, self.quantile);
        self.cached.store(answer.unwrap_or(NO_ANSWER), Relaxed);
    }

    /// The quantile in microseconds; `None` with too few samples.
    fn answer(&self, measured: &Histo, quantile: f64) -> Option<u64> {
        if measured.len() < self.min_samples {
            return None;
        }
        // hdrhistogram answers the highest value equivalent to the quantile's bucket (three
        // significant figures): the delay is the percentile rounded up, so no more than the
        // stated share of copies can be later than it.
        Some(measured.value_at_quantile(quantile))
    }

    /// Under the slow lock: rotates when the window is over, then merges previous + current
    /// into `slow.merged`.
    fn rotate_and_merge(&self, slow: &mut Slow, now: Instant) {
        self.since_refresh.store(0, Relaxed);
        let now_ns = self.now_ns(now);
        let start = self.window_start_ns.load(Relaxed);
        let elapsed = now_ns.saturating_sub(start);
        if elapsed >= self.window_ns {
            slow.previous.reset();
            // After a silence of two windows or more, the "current" window's samples are older
            // than a window: forget them too.
            let keep = elapsed < 2 * self.window_ns;
            let mut moved = 0;
            for shard in self.shards.iter() {
                let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
                if keep {
                    moved += h.len();
                    // Same bounds on both sides: adding cannot fail.
                    let _ = slow.previous.add(&*h);
                }
                h.reset();
            }
            // A record racing with the resets may be miscounted by one: the count only decides
            // when to refresh early.
            self.current_len.store(0, Relaxed);
            self.previous_len.store(moved, Relaxed);
            // Windows stay aligned to the period, so a quiet spell does not stretch one.
            let aligned = start + (elapsed / self.window_ns) * self.window_ns;
            self.window_start_ns.store(aligned, Relaxed);
        }
        slow.merged.reset();
        let _ = slow.merged.add(&slow.previous);
        for shard in self.shards.iter() {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            let _ = slow.merged.add(&*h);
        }
    }
}

/// Builds a [`LatencyTracker`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct LatencyTrackerBuilder {
    window: Duration,
    min_samples: u64,
    quantile: f64,
}

impl LatencyTrackerBuilder {
    /// The length of one window; answers cover between one and two of them. At least 1 ms.
    /// Default 10 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The latencies needed before the tracker answers at all. At least 1. Default 100.
    pub fn min_samples(mut self, min_samples: u64) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// The percentile kept ready for lock-free reads ([`LatencyTracker::watched`]), as a
    /// quantile in `0.0..=1.0`. Default 0.95.
    pub fn watch(mut self, quantile: f64) -> Self {
        self.quantile = quantile;
        self
    }

    /// Checks the values and builds the tracker.
    pub fn build(self) -> Result<LatencyTracker, ConfigError> {
        let window = check(
            "window",
            self.window,
            |w| *w >= Duration::from_millis(1) && *w <= Duration::from_secs(86_400),
            "between 1 ms and 1 day",
        )?;
        let min_samples = check("min_samples", self.min_samples, |n| *n >= 1, "at least 1")?;
        let quantile = check(
            "quantile",
            self.quantile,
            |q| (0.0..=1.0).contains(q),
            "a quantile in 0.0..=1.0",
        )?;
        let shards = (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect();
        Ok(LatencyTracker {
            inner: Arc::new(Inner {
                shards,
                next_shard: AtomicUsize::new(0),
                current_len: AtomicU64::new(0),
                since_refresh: AtomicU64::new(0),
                slow: Mutex::new(Slow {
                    previous: new_histogram(),
                    merged: new_histogram(),
                }),
                epoch: Instant::now(),
                window_start_ns: AtomicU64::new(0),
                window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
                min_samples,
                quantile,
                cached: AtomicU64::new(NO_ANSWER),
                previous_len: AtomicU64::new(0),
            }),
        })
    }
}
