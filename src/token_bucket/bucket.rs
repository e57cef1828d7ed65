use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

// The state word is loom's atomic in the loom model (loom_model.rs), so loom explores every
// interleaving of the compare-and-swap loops that share it.
#[cfg(all(test, backstop_loom))]
use loom::sync::atomic::AtomicU64 as StateWord;
#[cfg(not(all(test, backstop_loom)))]
use std::sync::atomic::AtomicU64 as StateWord;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use super::adaptive::{AdaptiveRate, Controller};
use super::future::Acquire;
use crate::classify::Outcome;
use crate::clock::{Clock, Epoch};
use crate::error::{ConfigError, check};
use crate::metrics::names;
use crate::metrics::publish;
use crate::metrics::shard::Sharded;

// The state word: in the low 36 bits a time `at` in milliseconds since the bucket was built
// (wrapping every 2.2 years), in the high 28 bits the tokens the bucket held at `at`, in 256ths,
// offset by BIAS so they may be negative. Tokens available now = the stored tokens + the refill
// since `at`, capped. A grant subtracts from the stored tokens and leaves `at` alone, so the
// refill (rounded down) is recomputed from the same `at` each time and no rounding ever
// accumulates; `at` moves on only when the bucket is full (exact) or about once a second (losing
// under 1/256 of a token). One word means one compare-and-swap decides a grant: the tokens and
// the time they were counted at can never be read or written apart.
const TIME_BITS: u32 = 36;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Fixed-point units per token.
pub(crate) const UNITS: u64 = 256;
const FIELD_MAX: u64 = (1 << (64 - TIME_BITS)) - 1;
/// The offset of the stored tokens; the refill left uncommitted stays below it.
const BIAS: u64 = 1 << 20;
/// Commit the refill (move `at`) once it reaches this many units or this many milliseconds.
const COMMIT_UNITS: u64 = BIAS - 1;
const COMMIT_MS: u64 = 1000;
/// The largest capacity, in tokens.
pub const MAX_CAPACITY: f64 = 1_000_000.0;
const MAX_CAP_UNITS: u64 = 1_000_000 * UNITS;
const _: () = assert!(MAX_CAP_UNITS + BIAS <= FIELD_MAX);
/// The largest rate, in tokens per second.
pub const MAX_RATE: f64 = 1e9;
/// The rate is kept as units per millisecond in 32.32 fixed point.
const RATE_SHIFT: u32 = 32;

fn pack(stored: i64, ms: u64) -> u64 {
    let field = (stored + BIAS as i64) as u64;
    (field << TIME_BITS) | (ms & TIME_MASK)
}

fn unpack(word: u64) -> (i64, u64) {
    ((word >> TIME_BITS) as i64 - BIAS as i64, word & TIME_MASK)
}

/// Milliseconds from the stored time `last` to `now`, both on the wrapping 36-bit clock. A
/// `last` ahead of `now` (written by a thread that read the clock a moment later) reads as 0.
/// `at` moves on at least once a second while the bucket is used, so wrapping only matters for a
/// bucket idle for over a year, which then refills as if idle for less (never more).
fn since(last: u64, now: u64) -> u64 {
    let elapsed = now.wrapping_sub(last) & TIME_MASK;
    if elapsed > TIME_MASK / 2 { 0 } else { elapsed }
}

fn rate_to_fixed(rate: f64) -> u64 {
    // Rounded to nearest, so a token is there exactly when it is due (10/s: one every 100 ms);
    // the error is under 2⁻³³ of a unit per millisecond, a 256th of a token in a century.
    (rate * UNITS as f64 / 1000.0 * (1u64 << RATE_SHIFT) as f64).round() as u64
}

fn tokens_to_units(tokens: f64) -> u64 {
    ((tokens * UNITS as f64).floor() as u64).min(MAX_CAP_UNITS)
}

/// The bucket seen at one instant, computed from the state word without writing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    /// Units available now (never above the capacity, never below 0).
    avail: u64,
    /// The stored units and their time, as in the word.
    stored: i64,
    at: u64,
    /// The refill since `at`, rounded down, before the cap.
    add: u64,
    elapsed: u64,
    /// The time, on the state's clock, the view was taken at.
    now: u64,
    cap: u64,
    rate: u64,
}

impl View {
    fn of(word: u64, now: u64, cap: u64, rate: u64) -> View {
        let (stored, at) = unpack(word);
        let now = now & TIME_MASK;
        let elapsed = since(at, now);
        let add = match elapsed.checked_mul(rate) {
            Some(product) => product >> RATE_SHIFT,
            None => ((u128::from(elapsed) * u128::from(rate)) >> RATE_SHIFT)
                .min(u128::from(u64::MAX >> 2)) as u64,
        };
        let total = stored.saturating_add(add.min(i64::MAX as u64) as i64);
        let avail = total.clamp(0, cap as i64) as u64;
        View {
            avail,
            stored,
            at,
            add,
            elapsed,
            now: (at + elapsed) & TIME_MASK,
            cap,
            rate,
        }
    }

    fn full(&self) -> bool {
        self.avail >= self.cap
    }

    /// The word after taking `units` (≤ `avail`) and then adding `give` back.
    fn after(&self, units: u64, give: u64) -> u64 {
        let left = (self.avail - units).saturating_add(give);
        if self.full() || left >= self.cap {
            // Full (before or after): the time no longer matters; restart the clock, exactly.
            return pack(left.min(self.cap) as i64, self.now);
        }
        if self.add >= COMMIT_UNITS || self.elapsed >= COMMIT_MS || self.rate == 0 {
            return self.committed(left);
        }
        // Leave `at` alone: the refill since `at` is recomputed whole next time.
        pack(left as i64 - self.add as i64, self.at)
    }

    /// `left` units counted from a later `at`: moved on only by the milliseconds that paid for
    /// the refill (rounded up), so leftover time is never paid twice; loses under one unit.
    fn committed(&self, left: u64) -> u64 {
        if self.rate == 0 {
            return pack(left as i64, self.now);
        }
        let used = (u128::from(self.add) << RATE_SHIFT).div_ceil(u128::from(self.rate));
        let used = (used as u64).min(self.elapsed);
        pack(left as i64, (self.at + used) & TIME_MASK)
    }

    /// Milliseconds from the view's instant until `want` units are there (0 if they are).
    fn wait_for(&self, want: u64) -> Option<u64> {
        if self.avail >= want {
            return Some(0);
        }
        if self.rate == 0 {
            return None;
        }
        let need = (want as i128 - self.stored as i128).max(0) as u128;
        let ms = (need << RATE_SHIFT).div_ceil(u128::from(self.rate));
        let ms = u64::try_from(ms).ok()?;
        Some(ms.saturating_sub(self.elapsed).max(1))
    }
}

/// Takes `want` units at `now`: the next word and the units left, or the units available when
/// there are fewer than `want`. The same as [`View::of`] then [`View::after`], written out for
/// the two common cases (the bucket full, or a grant that leaves the time alone, which is a
/// plain subtraction from the stored tokens) so a grant costs little more than its clock read;
/// the rest (a refill to commit, a product that overflows) takes the general path. A test holds
/// the two equal.
#[inline(always)]
fn grant(word: u64, now: u64, cap: u64, rate: u64, want: u64) -> Result<(u64, u64), u64> {
    let (stored, at) = unpack(word);
    let elapsed = since(at, now & TIME_MASK);
    if elapsed == 0 && stored >= 0 && stored as u64 <= cap {
        // Within the millisecond the tokens were counted at (every grant but about one a
        // millisecond on a busy bucket): no refill, so the next word comes from the state
        // alone. Taken as a predicted branch, it leaves the clock read off the path to the
        // compare-and-swap, where the general arithmetic needs it first.
        let stored = stored as u64;
        return match stored.checked_sub(want) {
            Some(left) => Ok((pack(left as i64, at), left)),
            None => Err(stored),
        };
    }
    if let Some(product) = elapsed.checked_mul(rate) {
        let add = product >> RATE_SHIFT;
        // `add` < 2³², `stored` ≥ −2²⁰: no overflow.
        let total = stored + add as i64;
        if total >= cap as i64 {
            return match cap.checked_sub(want) {
                Some(left) => Ok((pack(left as i64, (at + elapsed) & TIME_MASK), left)),
                None => Err(cap),
            };
        }
        // A bucket in debt (another thread's later clock read ran ahead) takes the general
        // path, where a grant of nothing still succeeds.
        if add < COMMIT_UNITS && elapsed < COMMIT_MS && rate != 0 && total >= 0 {
            let total = total as u64;
            if total < want {
                return Err(total);
            }
            return Ok((pack(stored - want as i64, at), total - want));
        }
    }
    grant_by_view(word, now, cap, rate, want)
}

fn grant_by_view(word: u64, now: u64, cap: u64, rate: u64, want: u64) -> Result<(u64, u64), u64> {
    let view = View::of(word, now, cap, rate);
    if view.avail < want {
        return Err(view.avail);
    }
    Ok((view.after(want, 0), view.avail - want))
}

/// A client-wide token bucket: a shared, lock-free allowance of requests per second; see the
/// [module docs](super).
///
/// A cheap [`Clone`] handle: clones share one bucket. [`try_acquire`](Self::try_acquire) is one
/// compare-and-swap loop on a single `AtomicU64` (tokens in 256ths and the last refill time packed
/// together); the refill is computed from the bucket's [`Clock`] when asked, so there is no
/// background task. The default clock is tokio's when the bucket is built inside a runtime
/// whose clock is paused, else the CPU's counter: build it after `tokio::time::pause()`, or
/// choose [`Clock::tokio`], for a test's `advance` to move it. Rate and capacity can change at run time.
///
/// Over any span of `T` seconds at a fixed rate, the tokens granted are at most
/// `capacity + rate × (T + 1 ms)` (the clock is read in whole milliseconds); the refill loses
/// less than 1/256 of a token per grant.
///
/// ```
/// use backstop::token_bucket::TokenBucket;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let bucket = TokenBucket::builder("api").capacity(2.0).rate(10.0).build()?;
/// assert!(bucket.try_acquire(2));
/// assert!(!bucket.try_acquire(1)); // empty
/// tokio::time::advance(Duration::from_millis(100)).await;
/// assert!(bucket.try_acquire(1)); // 10/s: one token per 100 ms
/// bucket.acquire(1).await?; // waits 100 ms for the next one
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenBucket {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    name: String,
    epoch: Epoch,
    /// On a cache line of its own: every grant writes it, and the settings read beside it on
    /// each grant would otherwise bounce between cores with it.
    state: OwnLine<StateWord>,
    /// Capacity in units.
    cap: AtomicU64,
    /// Rate in units per ms, 32.32 fixed point.
    rate: AtomicU64,
    /// The rate as given, f64 bits, for reading back.
    rate_f64: AtomicU64,
    unlimited: AtomicBool,
    /// Requests in the wait line; `try_acquire` refuses while anyone waits, so it cannot starve
    /// the head of the line.
    pub(crate) waiting: AtomicUsize,
    pub(crate) queue: Mutex<WaitQueue>,
    controller: Option<Mutex<Controller>>,
    /// Grants and refusals, sharded by thread: published to the series in batches.
    counts: Sharded<2>,
    /// When the series are next published (the bucket's ms), read at every grant or refusal.
    next_publish_ms: AtomicU64,
    /// The counts last published (counters take increments); whoever holds it publishes.
    published: Mutex<[u64; 2]>,
    series: Series,
}

// How often grants and refusals reach the `metrics` recorder (and the tokens gauge is set), on
// the bucket's clock: a facade call per check would cost more than the check.
const PUBLISH_EVERY_MS: u64 = 100;
const ACQUIRED: usize = 0;
const DENIED: usize = 1;

/// A value aligned to, and so alone on, a 128-byte line (two 64-byte lines, as adjacent-line
/// prefetchers pull pairs).
#[repr(align(128))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Series {
    tokens: Gauge,
    rate: Gauge,
    acquired: Counter,
    denied: Counter,
}

#[derive(Default)]
pub(crate) struct WaitQueue {
    pub(crate) entries: VecDeque<Waiter>,
    pub(crate) next_id: u64,
}

pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) waker: Option<Waker>,
}

impl TokenBucket {
    /// Starts a builder with the defaults: capacity 100, 100 tokens per second, full, no
    /// adaptive rate.
    pub fn builder(name: impl Into<String>) -> TokenBucketBuilder {
        TokenBucketBuilder {
            name: name.into(),
            capacity: 100.0,
            rate: Some(100.0),
            initial: None,
            adaptive: None,
            clock: Clock::default(),
        }
    }

    /// A bucket holding `capacity` tokens that refills at `rate` tokens per second, full.
    pub fn new(
        name: impl Into<String>,
        capacity: f64,
        rate: f64,
    ) -> Result<TokenBucket, ConfigError> {
        Self::builder(name).capacity(capacity).rate(rate).build()
    }

    /// The AWS SDKs' standard-mode retry quota: 500 tokens, full, never refilled by time, only
    /// by successes. Use it as a retry [`Budget`](crate::retry::Budget): a retry costs 5, a retry
    /// after a timeout 10, a success gives 1 back.
    pub fn retry_quota(name: impl Into<String>) -> TokenBucket {
        Self::builder(name)
            .capacity(500.0)
            .rate(0.0)
            .build()
            .expect("the standard quota is valid")
    }

    /// The name the bucket's metric series carry.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Milliseconds since the bucket was built (full width; the state keeps the low 36 bits).
    #[inline]
    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed_ms()
    }

    #[inline]
    fn cap_units(&self) -> u64 {
        self.inner.cap.load(Ordering::Acquire)
    }

    #[inline]
    fn rate_fixed(&self) -> u64 {
        self.inner.rate.load(Ordering::Acquire)
    }

    /// Takes `n` tokens now if the bucket holds them and nobody waits; never waits.
    #[inline]
    pub fn try_acquire(&self, n: u32) -> bool {
        let granted = self.inner.unlimited.load(Ordering::Acquire)
            || (self.inner.waiting.load(Ordering::Acquire) == 0 && self.take(n));
        self.count(granted);
        granted
    }

    #[inline]
    pub(crate) fn count(&self, granted: bool) {
        self.inner
            .counts
            .add(if granted { ACQUIRED } else { DENIED }, 1);
    }

    /// Publishes if the last publication is `PUBLISH_EVERY_MS` old at `now` (the bucket's ms).
    #[inline]
    fn maybe_publish(&self, now: u64) {
        if now >= self.inner.next_publish_ms.load(Ordering::Relaxed) {
            self.publish_at(now);
        }
    }

    #[cold]
    fn publish_at(&self, now: u64) {
        let Some(mut published) = publish::try_lock_or_skip(&self.inner.published) else {
            return;
        };
        self.inner
            .next_publish_ms
            .store(now + PUBLISH_EVERY_MS, Ordering::Relaxed);
        let counters = [&self.inner.series.acquired, &self.inner.series.denied];
        publish::push_counts(counters, &mut *published, self.inner.counts.sums());
        self.inner.series.tokens.set(self.tokens());
    }

    /// Pushes the grant and refusal counts and the tokens gauge to the series now. The bucket
    /// publishes by itself at most every 100 ms of its clock, at a grant or a refusal, and at
    /// each change of its settings: call this where the series must be exact at once, such as
    /// before a scrape or in a test.
    pub fn publish(&self) {
        self.publish_at(self.now_ms());
        self.publish_settings();
    }

    fn view(&self, word: u64, now: u64) -> View {
        View::of(word, now, self.cap_units(), self.rate_fixed())
    }

    /// The compare-and-swap loop; false when the bucket holds fewer than `n` tokens.
    #[inline(always)]
    pub(crate) fn take(&self, n: u32) -> bool {
        let want = u64::from(n) * UNITS;
        let now = self.now_ms();
        let state = &self.inner.state;
        let (cap, rate) = (self.cap_units(), self.rate_fixed());
        let mut word = state.load(Ordering::Acquire);
        loop {
            let next = match grant(word, now, cap, rate, want) {
                Ok((next, _left)) => next,
                Err(_) => {
                    self.maybe_publish(now);
                    return false;
                }
            };
            match state.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.maybe_publish(now);
                    return true;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Waits for `n` tokens, in line behind earlier waiters (first come, first served, so a
    /// large request is not starved by small ones).
    ///
    /// Cancellation-safe: a waiter dropped before it is granted takes nothing and leaves the line
    /// at once. Fails at once with [`Overloaded`](crate::Overloaded)`{ reason: RateLimited }` if
    /// `n` is more than the capacity (it could never be granted). With a rate of 0 it waits until
    /// the rate or the tokens change: bound the wait with a timeout.
    ///
    /// The wait sleeps on tokio's timer. On a bucket running on the CPU's counter under
    /// `tokio::time::pause` (built before the pause, or with [`Clock::cpu_counter`]), tokio's
    /// time races ahead while the counter does not, so the waiter wakes, finds no token, and
    /// sleeps again as fast as the runtime lets it: in tests that pause, build the bucket
    /// after the pause or on [`Clock::tokio`].
    pub fn acquire(&self, n: u32) -> Acquire {
        Acquire::new(self.clone(), n)
    }

    /// The tokens the bucket holds now (refilled up to now); the capacity while unlimited.
    pub fn tokens(&self) -> f64 {
        let view = self.view(self.inner.state.load(Ordering::Acquire), self.now_ms());
        view.avail as f64 / UNITS as f64
    }

    /// The most tokens the bucket holds.
    pub fn capacity(&self) -> f64 {
        self.cap_units() as f64 / UNITS as f64
    }

    /// The refill rate in tokens per second, or `None` while unlimited.
    pub fn rate(&self) -> Option<f64> {
        if self.inner.unlimited.load(Ordering::Acquire) {
            None
        } else {
            Some(f64::from_bits(self.inner.rate_f64.load(Ordering::Acquire)))
        }
    }

    /// How long until `n` tokens could be granted, if nobody else takes any; zero when they are
    /// there now, `None` if they never will be (rate 0, or `n` above the capacity).
    pub fn time_until(&self, n: u32) -> Option<Duration> {
        if self.is_unlimited() {
            return Some(Duration::ZERO);
        }
        self.next_ready(n)
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// When `n` tokens will be there (now if they are); `None` at rate 0 or above the capacity.
    pub(crate) fn next_ready(&self, n: u32) -> Option<Instant> {
        let want = u64::from(n) * UNITS;
        if want > self.cap_units() {
            return None;
        }
        let now = self.now_ms();
        let view = self.view(self.inner.state.load(Ordering::Acquire), now);
        match view.wait_for(want)? {
            0 => Some(Instant::now()),
            wait => self.inner.epoch.tokio_instant(now.checked_add(wait)?, now),
        }
    }

    /// Refills up to now under the current settings and writes it back, then applies `change`
    /// to the settings and clamps the tokens to the new capacity. A waiter at the head of the
    /// line is woken to look again.
    fn reconfigure(&self, change: impl FnOnce(&Inner)) {
        let now = self.now_ms();
        let state = &self.inner.state;
        let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let view = self.view(word, now);
            Some(view.committed(view.avail))
        });
        change(&self.inner);
        let cap = self.cap_units();
        let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (stored, at) = unpack(word);
            (stored > cap as i64).then(|| pack(cap as i64, at))
        });
        self.publish_settings();
        self.wake_head();
    }

    fn store_rate(inner: &Inner, rate: f64) {
        inner.rate.store(rate_to_fixed(rate), Ordering::Release);
        inner.rate_f64.store(rate.to_bits(), Ordering::Release);
    }

    /// Sets the refill rate, in tokens per second (0 stops the refill; at most 1e9); a bucket
    /// that was unlimited becomes limited, starting from what it holds. Out-of-range values are
    /// clamped (NaN counts as 0).
    pub fn set_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, MAX_RATE)
        };
        self.reconfigure(|inner| {
            Self::store_rate(inner, rate);
            inner.unlimited.store(false, Ordering::Release);
        });
    }

    /// Sets the capacity, in tokens (clamped to `[0, MAX_CAPACITY]`). Tokens above it are lost.
    pub fn set_capacity(&self, capacity: f64) {
        let cap = if capacity.is_nan() {
            0
        } else {
            tokens_to_units(capacity.max(0.0))
        };
        self.reconfigure(|inner| inner.cap.store(cap, Ordering::Release));
    }

    /// Lifts the limit: every request passes until [`set_rate`](Self::set_rate) is called.
    pub fn set_unlimited(&self) {
        self.inner.unlimited.store(true, Ordering::Release);
        self.publish_settings();
        self.wake_head();
    }

    /// Puts `n` tokens back (up to the capacity), for example a refund.
    pub fn add(&self, n: u32) {
        let add = u64::from(n) * UNITS;
        let now = self.now_ms();
        let _ = self
            .inner
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some(self.view(word, now).after(0, add))
            });
        self.wake_head();
    }

    /// True when the bucket has an adaptive rate.
    pub fn is_adaptive(&self) -> bool {
        self.inner.controller.is_some()
    }

    /// Feeds the outcome of one response, to a request sent at `sent_at`, to the adaptive rate:
    /// an [`Outcome::Overload`] cuts the rate, anything else lets it climb along the CUBIC
    /// curve. An overload of a request sent before the last cut does not cut again: it was sent
    /// at the old rate, so it is the same congestion event (one cut per round trip, as TCP). Does
    /// nothing on a bucket without an adaptive rate. The
    /// [`TokenBucketLayer`](super::TokenBucketLayer) calls it for you.
    pub fn on_outcome(&self, outcome: Outcome, sent_at: Instant) {
        let Some(controller) = &self.inner.controller else {
            return;
        };
        let now = self.inner.epoch.elapsed().as_secs_f64();
        let sent_at = self.inner.epoch.since_epoch(sent_at).as_secs_f64();
        let mut c = lock(controller);
        let was_enabled = c.enabled();
        let Some(rate) = c.on_response(now, sent_at, outcome.is_overload(), self.rate()) else {
            return;
        };
        drop(c);
        let capacity = rate.max(1.0);
        if !was_enabled {
            // The first throttle switches the limit on, starting empty: the server has just said
            // it has had enough. Later cuts only lower the capacity (to one second at the new
            // rate), as the AWS SDKs do: emptying at every cut would stall the client for a
            // whole refill on top of the cut.
            let now = self.now_ms();
            self.inner.state.store(pack(0, now), Ordering::Release);
        }
        self.reconfigure(|inner| {
            Self::store_rate(inner, rate);
            inner
                .cap
                .store(tokens_to_units(capacity), Ordering::Release);
            inner.unlimited.store(false, Ordering::Release);
        });
    }

    /// The adaptive rate's smoothed measurement of the send rate, requests per second.
    pub fn measured_rate(&self) -> Option<f64> {
        self.inner
            .controller
            .as_ref()
            .map(|c| lock(c).measured_rate())
    }

    fn publish_settings(&self) {
        self.publish_at(self.now_ms());
        self.inner.series.tokens.set(self.tokens());
        self.inner
            .series
            .rate
            .set(self.rate().unwrap_or(f64::INFINITY));
    }

    pub(crate) fn queue(&self) -> MutexGuard<'_, WaitQueue> {
        lock(&self.inner.queue)
    }

    /// Wakes the waiter at the head of the line, to look at the bucket again.
    pub(crate) fn wake_head(&self) {
        if self.inner.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let queue = self.queue();
        if let Some(head) = queue.entries.front()
            && let Some(waker) = &head.waker
        {
            waker.wake_by_ref();
        }
    }

    /// `try_acquire` without counting: the waiter counts its own outcome once.
    pub(crate) fn try_acquire_quiet(&self, n: u32) -> bool {
        self.is_unlimited() || (self.inner.waiting.load(Ordering::Acquire) == 0 && self.take(n))
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.inner.unlimited.load(Ordering::Acquire)
    }

    pub(crate) fn fits(&self, n: u32) -> bool {
        u64::from(n) * UNITS <= self.cap_units()
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain numbers; carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("name", &self.inner.name)
            .field("tokens", &self.tokens())
            .field("capacity", &self.capacity())
            .field("rate", &self.rate())
            .field("waiting", &self.inner.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a [`TokenBucket`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct TokenBucketBuilder {
    name: String,
    capacity: f64,
    rate: Option<f64>,
    initial: Option<f64>,
    adaptive: Option<AdaptiveRate>,
    clock: Clock,
}

impl TokenBucketBuilder {
    /// Where the refill reads the time. The default is chosen at [`build`](Self::build):
    /// tokio's clock inside a runtime whose clock is paused, else the CPU's counter (a few ns a
    /// read, as governor's). [`Clock::tokio`] keeps tokio's clock even when the test pauses
    /// after building; [`Clock::cpu_counter`] forces the counter. See [`Clock`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The most tokens the bucket holds, in [1, 1e6]. Default 100. Below 1 a bucket could never
    /// hold the token a request costs, and would refuse everything, so it is an error.
    pub fn capacity(mut self, capacity: f64) -> Self {
        self.capacity = capacity;
        self
    }

    /// Tokens added per second, in [0, 1e9] (0: only [`add`](TokenBucket::add) refills it).
    /// Default 100.
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }

    /// No limit until [`set_rate`](TokenBucket::set_rate) (or, with an adaptive rate, the first
    /// throttle).
    pub fn unlimited(mut self) -> Self {
        self.rate = None;
        self
    }

    /// The tokens held at the start, in [0, capacity]. Default: full.
    pub fn initial_tokens(mut self, tokens: f64) -> Self {
        self.initial = Some(tokens);
        self
    }

    /// Lets the rate follow the server: cut once per congestion event, climb back along CUBIC.
    /// Unless the adaptive settings give an initial rate, the bucket is unlimited until the first
    /// throttle; rate and capacity given here are then replaced by the adaptive ones.
    pub fn adaptive(mut self, adaptive: AdaptiveRate) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// Checks the values, registers the metric series, and builds the bucket.
    pub fn build(self) -> Result<TokenBucket, ConfigError> {
        let (mut capacity, mut rate) = (self.capacity, self.rate);
        if let Some(a) = &self.adaptive {
            rate = a.initial_rate_value();
            capacity = rate.unwrap_or(1.0).clamp(1.0, MAX_CAPACITY);
        }
        let capacity = check(
            "capacity",
            capacity,
            |c| *c >= 1.0 && *c <= MAX_CAPACITY,
            "in [1, 1e6] tokens (a request costs 1)",
        )?;
        if let Some(r) = rate {
            check(
                "rate",
                r,
                |r| (0.0..=MAX_RATE).contains(r),
                "in [0, 1e9] per second",
            )?;
        }
        let initial = match self.initial {
            Some(t) => check(
                "initial_tokens",
                t,
                |t| (0.0..=capacity).contains(t),
                "in [0, capacity]",
            )?,
            None => capacity,
        };
        names::describe_token_bucket();
        let label = [(names::NAME_LABEL, self.name.clone())];
        let series = Series {
            tokens: gauge!(names::TOKEN_BUCKET_TOKENS, &label),
            rate: gauge!(names::TOKEN_BUCKET_RATE, &label),
            acquired: counter!(names::TOKEN_BUCKET_ACQUIRED, &label),
            denied: counter!(names::TOKEN_BUCKET_DENIED, &label),
        };
        let epoch = self.clock.start();
        let bucket = TokenBucket {
            inner: Arc::new(Inner {
                name: self.name,
                epoch,
                state: OwnLine(StateWord::new(pack(tokens_to_units(initial) as i64, 0))),
                cap: AtomicU64::new(tokens_to_units(capacity)),
                rate: AtomicU64::new(rate_to_fixed(rate.unwrap_or(0.0))),
                rate_f64: AtomicU64::new(rate.unwrap_or(0.0).to_bits()),
                unlimited: AtomicBool::new(rate.is_none()),
                waiting: AtomicUsize::new(0),
                queue: Mutex::new(WaitQueue::default()),
                controller: self.adaptive.map(|a| Mutex::new(Controller::new(a, 0.0))),
                counts: Sharded::default(),
                next_publish_ms: AtomicU64::new(PUBLISH_EVERY_MS),
                published: Mutex::new([0; 2]),
                series,
            }),
        };
        bucket.inner.series.acquired.absolute(0);
        bucket.inner.series.denied.absolute(0);
        bucket.publish();
        let weak = Arc::downgrade(&bucket.inner);
        crate::metrics::publish::register(move || {
            weak.upgrade()
                .map(|inner| TokenBucket { inner }.publish())
                .is_some()
        });
        Ok(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 1_000 * UNITS;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// The written-out grant path answers exactly as the general one, for any state,
        /// with the edges (full, empty, the commit thresholds, a clock read behind `at`)
        /// drawn often.
        #[test]
        fn the_fast_grant_is_the_general_grant(
            stored_frac in proptest::prop_oneof![
                proptest::strategy::Just(1.0),
                proptest::strategy::Just(0.0),
                0.0..=1.0f64
            ],
            negative in proptest::prelude::any::<bool>(),
            at in 0..=TIME_MASK,
            step in proptest::prop_oneof![
                0u64..3,
                995u64..1005,
                0u64..2_000,
                (TIME_MASK / 2 - 2)..(TIME_MASK / 2 + 3),
                (TIME_MASK - 2)..=TIME_MASK,
                0..=TIME_MASK
            ],
            cap in 1..=MAX_CAP_UNITS,
            rate_per_s in proptest::prop_oneof![proptest::strategy::Just(0.0), 0.0..100.0f64, 0.0..=MAX_RATE],
            want_tokens in 0u64..2_000,
        ) {
            let stored = if negative {
                -((stored_frac * (BIAS - 1) as f64) as i64)
            } else {
                (stored_frac * cap as f64) as i64
            };
            let word = pack(stored, at);
            let now = at.wrapping_add(step);
            let rate = rate_to_fixed(rate_per_s);
            let want = want_tokens * UNITS;
            proptest::prop_assert_eq!(
                grant(word, now, cap, rate, want),
                grant_by_view(word, now, cap, rate, want)
            );
        }
    }

    #[test]
    fn pack_round_trips() {
        assert_eq!(unpack(pack(-5, 7)), (-5, 7));
        assert_eq!(
            unpack(pack(MAX_CAP_UNITS as i64, TIME_MASK)),
            (MAX_CAP_UNITS as i64, TIME_MASK)
        );
    }

    #[test]
    fn grants_leave_the_clock_alone_and_full_restarts_it() {
        let rate = rate_to_fixed(0.1); // 25.6 units per second
        let v = View::of(pack(0, 0), 30, CAP, rate);
        assert_eq!((v.avail, v.add), (0, 0));
        let v = View::of(pack(0, 0), 1000, CAP, rate);
        assert_eq!(v.avail, 25);
        // A grant after 500 ms keeps `at`: the next view recomputes the refill whole.
        let v = View::of(pack(300, 0), 500, CAP, rate);
        let (stored, at) = unpack(v.after(UNITS, 0));
        assert_eq!((stored, at), (300 + 12 - 256 - 12, 0));
        // Full: the clock jumps to now.
        let v = View::of(pack(CAP as i64, 0), 5, CAP, rate);
        assert_eq!(unpack(v.after(0, 0)), (CAP as i64, 5));
        // A stored time a moment ahead of `now` counts as no time passed.
        assert_eq!(View::of(pack(3, 10), 9, CAP, rate).avail, 3);
    }

    #[test]
    fn clock_wraps_without_losing_or_inventing_time() {
        let rate = rate_to_fixed(1000.0); // 256 units per ms
        let v = View::of(pack(0, TIME_MASK - 1), 3, MAX_CAP_UNITS, rate);
        assert_eq!(v.avail, 5 * 256);
    }

    #[test]
    fn refill_grants_at_most_rate_times_time_and_loses_almost_nothing() {
        for rate_per_s in [0.5, 1.0, 3.3, 62.5, 100.0, 317.0, 12345.6] {
            let rate = rate_to_fixed(rate_per_s);
            let (mut word, mut granted) = (pack(0, 0), 0u64);
            for now in 1..=20_000u64 {
                let mut view = View::of(word, now, MAX_CAP_UNITS, rate);
                while view.avail >= UNITS {
                    granted += 1;
                    word = view.after(UNITS, 0);
                    view = View::of(word, now, MAX_CAP_UNITS, rate);
                }
                if now % 7 == 0 {
                    // A reconfiguration now and then commits the refill.
                    word = view.committed(view.avail);
                }
                let bound = rate_per_s * now as f64 / 1000.0;
                assert!(granted as f64 <= bound + 1e-6, "rate {rate_per_s} t {now}");
            }
            let ideal = rate_per_s * 20.0;
            let commits = 20_000.0 / 7.0;
            let floor = ideal - 1.0 - commits / UNITS as f64 - ideal * 1e-9;
            assert!(
                granted as f64 >= floor,
                "rate {rate_per_s}: {granted} of {ideal}"
            );
        }
    }
}
