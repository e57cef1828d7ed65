use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ConfigError, check};

/// Latencies are kept in microseconds, from 1 µs to 100 s (longer ones count as 100 s), to two
/// significant figures: within 0.8% (12,345 µs reads as 12,288 µs, 64 µs steps there). tower's
/// `Hedge` rounds every latency up to a whole millisecond, which matters when the usual latency
/// is a few ms. The buckets are an hdrhistogram's for (1 µs, 100 s, 2 figures): 128 linear steps
/// per power of two, 2,688 counters (three figures would take 18,432).
const LOWEST_MICROS: u64 = 1;
const HIGHEST_MICROS: u64 = 100_000_000;
const HALF_MAGNITUDE: u32 = 7;
const HALF: usize = 1 << HALF_MAGNITUDE;
/// Values below this are counted one by one (bucket 0).
const SUB_MASK: u64 = (2 * HALF as u64) - 1;
const LEADING_ZERO_BASE: u32 = 64 - (HALF_MAGNITUDE + 1);
/// Powers of two above bucket 0 needed to reach `HIGHEST_MICROS` (256 × 2^19 > 10^8).
const BUCKETS: usize = 20;
const SLOTS: usize = (BUCKETS + 1) * HALF;
/// Words of the bitmaps of counters in use.
const WORDS: usize = SLOTS.div_ceil(64);
/// The cached percentile is refreshed after this many records at most (and at every rotation).
const REFRESH_EVERY: u64 = 1024;
/// `cached` holds this while the tracker has too few samples to answer.
const NO_ANSWER: u64 = u64::MAX;

/// The counter of a latency in microseconds (`LOWEST_MICROS..=HIGHEST_MICROS`).
fn slot(micros: u64) -> usize {
    let bucket = LEADING_ZERO_BASE - (micros | SUB_MASK).leading_zeros();
    let sub = (micros >> bucket) as usize;
    ((bucket as usize + 1) << HALF_MAGNITUDE) + sub - HALF
}

fn bucket_of(slot: usize) -> u32 {
    ((slot >> HALF_MAGNITUDE) as u32).saturating_sub(1)
}

/// The lowest latency a counter holds.
fn lowest(slot: usize) -> u64 {
    let sub = if slot < HALF {
        slot
    } else {
        (slot & (HALF - 1)) + HALF
    };
    (sub as u64) << bucket_of(slot)
}

/// The highest latency a counter holds.
fn highest(slot: usize) -> u64 {
    lowest(slot) + (1u64 << bucket_of(slot)) - 1
}

fn counters<T>(n: usize, zero: impl Fn() -> T) -> Box<[T]> {
    (0..n).map(|_| zero()).collect()
}

/// The counters whose bit is set in `bits` (word `word` of a bitmap), lowest first.
fn slots_in(word: usize, mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let i = word * 64 + bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(i)
    })
}

/// Latency percentiles over a sliding period, for deciding when a request is late.
///
/// Records go into the current window; when a window ends it becomes the previous one and a new
/// one starts, so answers always cover between one and two windows of the most recent traffic and
/// an old slow spell is forgotten. The tracker answers nothing at all until the windows it reads
/// hold at least `min_samples` latencies: a hedge delay taken from five samples would be noise.
///
/// The percentile the hedge layer reads ([`watched`](LatencyTrackerBuilder::watch)) is cached in
/// an atomic and read lock-free on every request. Recording takes no lock either: one atomic
/// add to the current window's counter for that latency, and a countdown to the next refresh.
/// The answer is refreshed under a mutex at each rotation and every 1,024 records (sooner while
/// the windows hold few samples: whenever an eighth of them is new). The countdown is a plain
/// load and store, so under contention a few records may not count towards it: a refresh then
/// comes a few records late, never early, and the answer itself counts every record. A tracker
/// holds about 42 KB.
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
    /// The current window's latencies (completed, and cut short), counted without a lock.
    done: Box<[AtomicU32]>,
    censored: Box<[AtomicU32]>,
    /// One bit per counter used in the current window: a refresh walks only those (a service's
    /// latencies fill a few hundred of the 2,688), not every counter.
    touched: Box<[AtomicU64]>,
    /// Records left before the cached answer is refreshed.
    until_refresh: AtomicU64,
    /// When the current window ends, in nanoseconds since `epoch`.
    window_end_ns: AtomicU64,
    /// The previous window and the rotation, under one lock: taken at a rotation, a refresh or
    /// a [`percentile`](LatencyTracker::percentile), never by a record in between, and never
    /// across an `.await`.
    state: Mutex<State>,
    epoch: Instant,
    window_ns: u64,
    min_samples: u64,
    quantile: f64,
    /// The watched percentile in microseconds, or [`NO_ANSWER`].
    cached: AtomicU64,
}

struct State {
    /// The previous window's counters and their bitmap: frozen until the next rotation.
    done: Box<[u32]>,
    censored: Box<[u32]>,
    touched: Box<[u64]>,
    /// When the current window started, in nanoseconds since `epoch`.
    window_start_ns: u64,
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
        let now_ns = inner.now_ns(now);
        if now_ns >= inner.window_end_ns.load(Relaxed) {
            let mut state = inner.lock();
            if inner.rotate(&mut state, now_ns) {
                inner.refresh(&state);
            }
        }
        let counters = if censored {
            &inner.censored
        } else {
            &inner.done
        };
        let i = slot(micros);
        // Counted, then flagged: a rotation clears the flags before it takes the counts, so a
        // count it leaves behind is flagged again (`SeqCst` keeps that order on every CPU; on
        // x86-64 it costs what `Relaxed` does).
        counters[i].fetch_add(1, SeqCst);
        let (word, bit) = (&inner.touched[i / 64], 1u64 << (i % 64));
        if word.load(SeqCst) & bit == 0 {
            word.fetch_or(bit, SeqCst);
        }
        // A load and a store, not a read-modify-write: this count only times the refresh.
        let left = inner.until_refresh.load(Relaxed);
        if left <= 1 {
            inner.refresh(&inner.lock());
        } else {
            inner.until_refresh.store(left - 1, Relaxed);
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
        if inner.rotate(&mut state, inner.now_ns(Instant::now())) {
            inner.refresh(&state);
        }
        let (answer, _) = inner.answer(&state, quantile);
        answer.map(Duration::from_micros)
    }

    /// How many latencies the tracker reads from now (current and previous window).
    pub fn samples(&self) -> u64 {
        let inner = &*self.inner;
        let state = inner.lock();
        let mut len = 0;
        inner.walk(&state, |_, done, cut| {
            len += done + cut;
            None::<()>
        });
        len
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
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a counter half-updated in a way that matters here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ns(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    /// Both windows' counts (completed, cut short) at counter `i`.
    fn counts(&self, state: &State, i: usize) -> (u64, u64) {
        (
            u64::from(state.done[i]) + u64::from(self.done[i].load(Relaxed)),
            u64::from(state.censored[i]) + u64::from(self.censored[i].load(Relaxed)),
        )
    }

    /// Calls `f(counter, done, cut)` for every counter in use in either window, lowest first,
    /// until it returns something.
    fn walk<R>(&self, state: &State, mut f: impl FnMut(usize, u64, u64) -> Option<R>) -> Option<R> {
        for (w, previous) in state.touched.iter().enumerate() {
            for i in slots_in(w, previous | self.touched[w].load(SeqCst)) {
                let (done, cut) = self.counts(state, i);
                if let Some(r) = f(i, done, cut) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Starts a new window when the current one is over; true if it did.
    fn rotate(&self, state: &mut State, now_ns: u64) -> bool {
        let start = state.window_start_ns;
        let elapsed = now_ns.saturating_sub(start);
        if elapsed < self.window_ns {
            // Another record rotated first.
            return false;
        }
        // After a silence of two windows or more, the "current" window's samples are older
        // than a window: forget them too.
        let keep = elapsed < 2 * self.window_ns;
        for (w, previous) in state.touched.iter_mut().enumerate() {
            for i in slots_in(w, std::mem::take(previous)) {
                state.done[i] = 0;
                state.censored[i] = 0;
            }
        }
        for (w, flags) in self.touched.iter().enumerate() {
            // Flags first, then counts (see `record_into`).
            let bits = flags.swap(0, SeqCst);
            for i in slots_in(w, bits) {
                let (done, cut) = (
                    self.done[i].swap(0, SeqCst),
                    self.censored[i].swap(0, SeqCst),
                );
                if keep {
                    state.done[i] = done;
                    state.censored[i] = cut;
                }
            }
            if keep {
                state.touched[w] = bits;
            }
        }
        // Windows stay aligned to the period, so a quiet spell does not stretch one.
        state.window_start_ns = start + (elapsed / self.window_ns) * self.window_ns;
        self.window_end_ns.store(
            state.window_start_ns.saturating_add(self.window_ns),
            Relaxed,
        );
        true
    }

    /// Recomputes the cached percentile and when to do it next.
    fn refresh(&self, state: &State) {
        let (answer, len) = self.answer(state, self.quantile);
        self.cached.store(answer.unwrap_or(NO_ANSWER), Relaxed);
        // Next after an eighth of the windows is new (7 records more for every 7 held),
        // at most 1,024 records on, and as soon as the windows first hold enough to answer.
        let mut next = len.div_ceil(7);
        if answer.is_none() {
            next = next.min(self.min_samples.saturating_sub(len));
        }
        self.until_refresh
            .store(next.clamp(1, REFRESH_EVERY), Relaxed);
    }

    /// The quantile in microseconds over both windows (`None` with too few samples), and the
    /// samples held.
    ///
    /// With no latency cut short, the plain percentile: the lowest latency of the counter where
    /// the running count reaches `quantile` of the total. Otherwise the Kaplan–Meier
    /// (product-limit) estimate: walking up the values, each completed latency at `v` removes
    /// its share of the survivors, `1 / (latencies still running at v)`, and a censored one
    /// simply leaves the running set at its cut-off. A cancelled copy thus counts for exactly
    /// what is known about it: it was still running at that time. Completions at a value count
    /// before censorings at the same value (a copy cut at v was still running at v).
    ///
    /// When the running set empties before the quantile is reached (every copy that ran long
    /// enough was cut short: the delay is well below the percentile, as at start-up with the
    /// slow copies still running), the data cannot say where the percentile is, only that it
    /// is above the last value seen: the answer is twice that value, so a delay that is too
    /// short climbs back geometrically.
    ///
    /// Answers are rounded down to the lowest value of their counter: a latency recorded at
    /// exactly the percentile (as every latency is under a millisecond timer wheel like
    /// tokio's) gives exactly that delay back, where rounding up would cost a whole timer tick.
    fn answer(&self, state: &State, quantile: f64) -> (Option<u64>, u64) {
        let (mut done_total, mut cut_total) = (0u64, 0u64);
        self.walk(state, |_, done, cut| {
            done_total += done;
            cut_total += cut;
            None::<()>
        });
        let len = done_total + cut_total;
        if len < self.min_samples || len == 0 {
            return (None, len);
        }
        if cut_total == 0 {
            let target = ((quantile * done_total as f64).ceil() as u64).max(1);
            let (mut running, mut last) = (0, 0);
            let found = self.walk(state, |i, done, _| {
                if done == 0 {
                    return None;
                }
                last = i;
                running += done;
                (running >= target).then_some(i)
            });
            // Not found only when records raced this walk: the highest latency seen.
            return (Some(lowest(found.unwrap_or(last))), len);
        }
        let mut at_risk = len as f64;
        let mut survival = 1.0;
        let target = 1.0 - quantile;
        let mut last = LOWEST_MICROS;
        let found = self.walk(state, |i, done, cut| {
            if done == 0 && cut == 0 {
                return None;
            }
            last = highest(i);
            if done > 0 {
                let events = done as f64;
                if at_risk > 0.0 {
                    survival *= 1.0 - events / at_risk;
                }
                at_risk -= events;
                if survival <= target + 1e-12 {
                    return Some(lowest(i));
                }
            }
            at_risk -= cut as f64;
            None
        });
        let answer = found.unwrap_or_else(|| last.saturating_mul(2).min(HIGHEST_MICROS));
        (Some(answer), len)
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
        // At most a day (checked above): no overflow.
        let window_ns = window.as_secs() * 1_000_000_000 + u64::from(window.subsec_nanos());
        Ok(LatencyTracker {
            inner: Arc::new(Inner {
                done: counters(SLOTS, || AtomicU32::new(0)),
                censored: counters(SLOTS, || AtomicU32::new(0)),
                touched: counters(WORDS, || AtomicU64::new(0)),
                until_refresh: AtomicU64::new(1),
                window_end_ns: AtomicU64::new(window_ns),
                state: Mutex::new(State {
                    done: counters(SLOTS, || 0),
                    censored: counters(SLOTS, || 0),
                    touched: counters(WORDS, || 0),
                    window_start_ns: 0,
                }),
                epoch: Instant::now(),
                window_ns,
                min_samples,
                quantile,
                cached: AtomicU64::new(NO_ANSWER),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are an hdrhistogram's for the same bounds and precision: same bucket for
    /// every value, same lowest and highest equivalent values.
    #[test]
    fn counters_match_hdrhistogram() {
        let h = hdrhistogram::Histogram::<u32>::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, 2)
            .unwrap();
        assert_eq!(h.distinct_values(), SLOTS);
        let mut values: Vec<u64> = (1..5_000).collect();
        let mut v = 5_000u64;
        while v <= HIGHEST_MICROS {
            values.extend([v - 1, v, v + 1]);
            v = v * 9 / 8;
        }
        values.push(HIGHEST_MICROS);
        for v in values.into_iter().filter(|v| *v <= HIGHEST_MICROS) {
            let i = slot(v);
            assert!(i < SLOTS, "{v}");
            assert_eq!(lowest(i), h.lowest_equivalent(v), "{v}");
            assert_eq!(highest(i), h.highest_equivalent(v), "{v}");
        }
    }
}
