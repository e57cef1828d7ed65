use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::error::{ConfigError, check};

/// Latencies are kept in microseconds, from 1 µs to 100 s (longer ones count as 100 s), to two
/// significant figures: within 0.8% (12,345 µs reads as 12,288 µs, 64 µs steps there). tower's
/// `Hedge` rounds every latency up to a whole millisecond, which matters when the usual latency
/// is a few ms. Two figures, not three: a histogram is then 10.5 KB instead of 72 KB, and a
/// tracker holds four of them (done and censored, current and previous window).
const LOWEST_MICROS: u64 = 1;
const HIGHEST_MICROS: u64 = 100_000_000;
const SIGFIG: u8 = 2;
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

    fn subtract(&mut self, other: &Window) {
        // Only ever undoes an `add` of the same window: every count is there to take back.
        let _ = self.done.subtract(&other.done);
        let _ = self.censored.subtract(&other.censored);
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
/// an atomic and read lock-free on every request. Recording takes one lock, as a
/// mutex-guarded histogram does (held for one increment, never across an `.await`); the answer
/// is refreshed under it at each rotation and every 1,024 records (sooner while the windows hold
/// few samples: whenever an eighth of them is new). A tracker holds about 43 KB.
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
/// // The 95th of 100 samples is 10,094 µs; kept to 2 significant figures (64 µs steps here),
/// // rounded down.
/// let p95 = tracker.watched().unwrap().as_micros();
/// assert!((10_030..=10_094).contains(&p95), "{p95}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LatencyTracker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Both windows under one lock, held for one increment (and, every 1,024 records or at a
    /// rotation, for the answer's refresh), never across an `.await`.
    state: Mutex<State>,
    epoch: Instant,
    window_ns: u64,
    min_samples: u64,
    quantile: f64,
    /// The watched percentile in microseconds, or [`NO_ANSWER`].
    cached: AtomicU64,
}

struct State {
    current: Window,
    previous: Window,
    /// When the current window started, in nanoseconds since `epoch`.
    window_start_ns: u64,
    /// When the current window ends: a record before it needs no rotation arithmetic.
    window_end: Instant,
    /// Records since the cached answer was computed.
    since_refresh: u64,
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

    /// Records one latency (to the microsecond; longer than 100 s counts as 100 s). Reads the
    /// clock once, to know the window; a caller that has just read it passes it to
    /// [`record_at`](Self::record_at) instead.
    pub fn record(&self, latency: Duration) {
        self.record_into(latency, false, Instant::now());
    }

    /// [`record`](Self::record) for a latency that ended at `now` (the instant the caller read to
    /// measure it), without a clock read of its own: the hedge layer's path. `now` only places
    /// the latency in its window; an instant earlier than one already seen counts in the
    /// current window.
    pub fn record_at(&self, latency: Duration, now: Instant) {
        self.record_into(latency, false, now);
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
        self.record_into(at_least, true, Instant::now());
    }

    /// [`record_at_least`](Self::record_at_least) at `now`, without a clock read.
    pub(super) fn record_at_least_at(&self, at_least: Duration, now: Instant) {
        self.record_into(at_least, true, now);
    }

    fn record_into(&self, latency: Duration, censored: bool, now: Instant) {
        let inner = &*self.inner;
        // Whole microseconds from the `Duration`'s parts: `as_micros` goes through a u128.
        let micros = latency
            .as_secs()
            .min(HIGHEST_MICROS / 1_000_000)
            .saturating_mul(1_000_000)
            + u64::from(latency.subsec_micros());
        let micros = micros.clamp(LOWEST_MICROS, HIGHEST_MICROS);
        let mut state = inner.lock();
        // Before the window's end (all but one record a window) this is one comparison.
        let rotated = now >= state.window_end && inner.rotate(&mut state, now);
        let w = &mut state.current;
        if censored {
            w.censored.saturating_record(micros)
        } else {
            w.done.saturating_record(micros)
        }
        state.since_refresh += 1;
        // Refresh after 1,024 records, or sooner while the windows are thin (an eighth new
        // data), so a quiet service's delay does not lag a whole window behind; and at once
        // when the windows first hold enough to answer.
        let since = state.since_refresh;
        if since >= REFRESH_EVERY || rotated {
            inner.refresh(&mut state);
            return;
        }
        let len = state.len();
        let starved = len >= inner.min_samples && inner.cached.load(Relaxed) == NO_ANSWER;
        if since * 8 >= len || starved {
            inner.refresh(&mut state);
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
        let mut state = inner.lock();
        inner.rotate(&mut state, Instant::now());
        inner
            .answer(&mut state, quantile)
            .map(Duration::from_micros)
    }

    /// How many latencies the tracker reads from now (current and previous window).
    pub fn samples(&self) -> u64 {
        self.inner.lock().len()
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

impl State {
    fn len(&self) -> u64 {
        self.current.len() + self.previous.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a histogram half-updated in a way that matters here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts a new window when the current one is over; true if it did.
    fn rotate(&self, state: &mut State, now: Instant) -> bool {
        let now_ns = self.now_ns(now);
        let start = state.window_start_ns;
        let elapsed = now_ns.saturating_sub(start);
        if elapsed < self.window_ns {
            return false;
        }
        let State {
            current, previous, ..
        } = state;
        previous.reset();
        // After a silence of two windows or more, the "current" window's samples are older
        // than a window: forget them too.
        if elapsed < 2 * self.window_ns {
            previous.add(current);
        }
        current.reset();
        // Windows stay aligned to the period, so a quiet spell does not stretch one.
        state.window_start_ns = start + (elapsed / self.window_ns) * self.window_ns;
        state.window_end =
            self.epoch + Duration::from_nanos(state.window_start_ns + self.window_ns);
        true
    }

    /// Recomputes the cached percentile.
    fn refresh(&self, state: &mut State) {
        state.since_refresh = 0;
        let answer = self.answer(state, self.quantile);
        self.cached.store(answer.unwrap_or(NO_ANSWER), Relaxed);
    }

    /// The quantile in microseconds over both windows; `None` with too few samples.
    fn answer(&self, state: &mut State, quantile: f64) -> Option<u64> {
        if state.len() < self.min_samples {
            return None;
        }
        // Both windows are read as one by adding the current into the previous and taking it
        // back out: no third pair of histograms to merge into.
        let State {
            current, previous, ..
        } = state;
        previous.add(current);
        // Rounded down to the lowest value of the percentile's histogram bucket: a latency
        // recorded at exactly the percentile (as every latency is under a millisecond timer
        // wheel like tokio's) gives exactly that delay back, where rounding up would cost a
        // whole timer tick.
        let answer = previous.quantile(quantile);
        previous.subtract(current);
        Some(answer)
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
        let epoch = Instant::now();
        Ok(LatencyTracker {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    current: Window::new(),
                    previous: Window::new(),
                    window_start_ns: 0,
                    // The window is at most a day (checked above): no overflow.
                    window_end: epoch + window,
                    since_refresh: 0,
                }),
                epoch,
                window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
                min_samples,
                quantile,
                cached: AtomicU64::new(NO_ANSWER),
            }),
        })
    }
}
