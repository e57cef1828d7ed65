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

/// The latencies of one window (or a merge of windows): those seen to the end, and those cut
/// short (censored), known only to be longer than the time they had run.
struct Window {
    done: Histo,
    censored: Histo,
}

impl Window {
    fn new() -> Self {
        Window {
            done: new_histogram(),
            censored: new_histogram(),
        }
    }

    fn len(&self) -> u64 {
        self.done.len() + self.censored.len()
    }

    fn reset(&mut self) {
        self.done.reset();
        self.censored.reset();
    }

    fn add(&mut self, other: &Window) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.done.add(&other.done);
        let _ = self.censored.add(&other.censored);
    }

    /// The `quantile` of the latencies in microseconds, by the Kaplan–Meier (product-limit)
    /// estimator: walking up the values, each completed latency at `v` removes its share of the
    /// survivors, `1 / (latencies still running at v)`, and a censored one simply leaves the
    /// running set at its cut-off. A cancelled copy thus counts for exactly what is known about
    /// it: it was still running at that time. (With no censored latency this is the plain
    /// percentile.)
    ///
    /// When the running set empties before the quantile is reached (every copy that ran long
    /// enough was cut short: the delay is well below the percentile, as at start-up with the slow
    /// copies still running), the data cannot say where the percentile is, only that it is above
    /// the last value seen: the answer is twice that value, so a delay that is too short climbs
    /// back geometrically.
    fn quantile(&self, quantile: f64) -> u64 {
        if self.censored.is_empty() {
            return self
                .done
                .lowest_equivalent(self.done.value_at_quantile(quantile));
        }
        let mut at_risk = self.len() as f64;
        let mut survival = 1.0;
        let target = 1.0 - quantile;
        let mut done = self.done.iter_recorded().peekable();
        let mut censored = self.censored.iter_recorded().peekable();
        let mut last = LOWEST_MICROS;
        loop {
            let next_done = done.peek().map(|v| v.value_iterated_to());
            let next_cut = censored.peek().map(|v| v.value_iterated_to());
            // Completions at a value count before censorings at the same value (the usual
            // convention: a copy cut at v was still running at v).
            let value = match (next_done, next_cut) {
                (None, None) => break,
                (Some(d), Some(c)) => d.min(c),
                (Some(d), None) => d,
                (None, Some(c)) => c,
            };
            last = value;
            if next_done == Some(value) {
                let events = done.next().map_or(0, |v| v.count_at_value()) as f64;
                if at_risk > 0.0 {
                    survival *= 1.0 - events / at_risk;
                }
                at_risk -= events;
                if survival <= target + 1e-12 {
                    return self.done.lowest_equivalent(value);
                }
            }
            if next_cut == Some(value) {
                at_risk -= censored.next().map_or(0, |v| v.count_at_value()) as f64;
            }
        }
        last.saturating_mul(2).min(HIGHEST_MICROS)
    }
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
/// // rounded down.
/// let p95 = tracker.watched().unwrap().as_micros();
/// assert!((10_086..=10_094).contains(&p95), "{p95}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LatencyTracker {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Window>]>,
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
    previous: Window,
    merged: Window,
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
        self.record_into(latency, false);
    }

    /// Records a latency known only to be longer than `at_least`: a copy cancelled after
    /// `at_least` because the other copy answered first (a right-censored latency).
    ///
    /// Percentiles treat it as what it is, a copy still running at `at_least` (see
    /// [`percentile`](Self::percentile)). Leaving cancelled copies out, as tower's `Hedge`
    /// does, or recording them at the time they had run, drags the percentile down: once the
    /// delay is too short every slow copy is cancelled just after it and the tail is never seen
    /// again, so the delay sinks and the layer hedges far more than its percentile says.
    pub fn record_at_least(&self, at_least: Duration) {
        self.record_into(at_least, true);
    }

    fn record_into(&self, latency: Duration, censored: bool) {
        let inner = &*self.inner;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let micros = micros.clamp(LOWEST_MICROS, HIGHEST_MICROS);
        inner.with_shard(|w| {
            if censored {
                w.censored.saturating_record(micros)
            } else {
                w.done.saturating_record(micros)
            }
        });
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
    ///
    /// With censored latencies ([`record_at_least`](Self::record_at_least)) it is the
    /// Kaplan–Meier estimate: exact below the shortest cut-off, and above it each completed
    /// latency stands for the cancelled copies that were running with it (the cancel time
    /// does not depend on the cancelled copy's own latency: it is the delay plus the other
    /// copy's latency). When every copy that ran long enough was cancelled, the answer is twice
    /// the longest latency seen, a lower bound that climbs geometrically as the delay follows
    /// it.
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

    /// The quantile kept ready for [`watched`](Self::watched).
    pub(super) fn quantile(&self) -> f64 {
        self.inner.quantile
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
    fn with_shard(&self, f: impl FnOnce(&mut Window)) {
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
    fn answer(&self, measured: &Window, quantile: f64) -> Option<u64> {
        if measured.len() < self.min_samples {
            return None;
        }
        // To three significant figures, rounded down to the lowest value of the percentile's
        // histogram bucket: a latency recorded at exactly the percentile (as every latency is
        // under a millisecond timer wheel like tokio's) gives exactly that delay back, where
        // rounding up would cost a whole timer tick.
        Some(measured.quantile(quantile))
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
                    slow.previous.add(&h);
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
        let Slow { previous, merged } = slow;
        merged.reset();
        merged.add(previous);
        for shard in self.shards.iter() {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            merged.add(&h);
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
        let shards = (0..SHARDS).map(|_| Mutex::new(Window::new())).collect();
        Ok(LatencyTracker {
            inner: Arc::new(Inner {
                shards,
                next_shard: AtomicUsize::new(0),
                current_len: AtomicU64::new(0),
                since_refresh: AtomicU64::new(0),
                slow: Mutex::new(Slow {
                    previous: Window::new(),
                    merged: Window::new(),
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
