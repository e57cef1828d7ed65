//! [`ClientQuotas`]: per-client rate quotas (GCRA, as governor computes it) in a table of fixed
//! size and fixed bytes per client.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use foldhash::quality::RandomState;
use governor::Quota;
use metrics::{Counter, Gauge, counter, gauge};

use super::key::ClientId;
use super::table::{Change, KeyTable, MAX_KEYS};
use crate::error::{ConfigError, check};
use crate::metrics::names;
use crate::token_bucket::Clock;

/// Per-client rate quotas, shared by every layer and clone that holds the handle.
///
/// Each client gets the GCRA of the default [`Quota`] (the algorithm and the answers of
/// governor's rate limiter), or its own override. A client over its quota is refused until it is
/// back under, with the wait as the hint.
///
/// # Memory and fairness under any key stream
/// Clients are kept in a table allocated once, at build, with room for
/// [`max_keys`](ClientQuotasBuilder::max_keys) clients (default 100,000; 16 bytes each, 1.6 MB).
/// It never grows, whatever keys arrive: a client is stored as a 64-bit fingerprint of its key
/// (foldhash's quality hash under a random seed drawn at build), never the key, so a 1 KiB key
/// costs what a 3-byte key costs. Clients spread over sets of 8 unevenly, so the table starts replacing
/// clients in a full set before every slot is used (10⁵ distinct clients arriving at a table of
/// 10⁵ occupy about 86% of it); it never holds more than its bound.
///
/// A new client whose place in the table is full (a set of 8 slots its fingerprint picks)
/// replaces, in this order, a client whose bucket is full again (dropping it changes no
/// decision), else a client seen only once, else a returning one; the one closest to a full
/// bucket first (the least state lost). **A request is refused only by its own client's
/// bucket**: a flood of new keys cannot lock out a newcomer nor a known client, and since
/// one-shot keys make one request each, they replace each other and leave alone the clients
/// that keep coming back (the busy ones, and the ones over their quota, whom forgetting would
/// let out of it). A forgotten client starts again from a full bucket, as a new one does.
///
/// Per-client quotas share capacity fairly among clients; they cannot bound the total work of a
/// caller free to mint keys (each new key is a new client). Bound that with a key the caller
/// cannot choose ([`PrincipalKey`](super::PrincipalKey),
/// [`RemoteAddrKey`](super::RemoteAddrKey)) and with whole-client shedding driven by load
/// ([`ShedFraction`](super::ShedFraction)).
///
/// Two keys share a state only if their fingerprints are equal: probability 2⁻⁶⁴ for a pair. At
/// the default bound of 10⁵ clients a new key meets some tracked client's fingerprint with
/// probability 10⁵ / 2⁶⁴ ≈ 5.4 × 10⁻¹⁵, and a full table holds any colliding pair at all with
/// probability ≈ n² / 2⁶⁵ ≈ 2.7 × 10⁻¹⁰. The fingerprint's seed is secret and per handle, so a
/// client cannot search for a key that collides with another client's offline.
///
/// A known client's request reads the clock once, hashes its key once and takes no lock (a
/// compare-and-swap on its own slot); only a new client takes a lock, on its part of the table.
/// The time comes from the handle's [`Clock`](ClientQuotasBuilder::clock).
///
/// Clients whose bucket is full again are also dropped by a sweep, at most every
/// [`sweep_every`](ClientQuotasBuilder::sweep_every) (default 10 s), paid by a request of a new
/// client (known clients never pay it), so [`tracked_keys`](Self::tracked_keys) and the
/// `backstop_throttle_tracked_keys` gauge, updated whenever the count changes, show the clients
/// active now. Call [`sweep`](Self::sweep) from a timer if no new client comes.
///
/// ```
/// use backstop::throttle::{ClientId, ClientQuotas, Quota};
/// use std::num::NonZeroU32;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::ConfigError> {
/// let quotas = ClientQuotas::builder("api", Quota::per_second(NonZeroU32::new(2).unwrap()))
///     .override_key("batch", Quota::per_second(NonZeroU32::new(100).unwrap()))
///     .build()?;
/// let alice = ClientId::from("alice");
/// assert!(quotas.check(&alice).is_ok());
/// assert!(quotas.check(&alice).is_ok());
/// let wait = quotas.check(&alice).unwrap_err(); // over quota: come back in 0.5 s
/// assert_eq!(wait, std::time::Duration::from_millis(500));
/// assert!((0..50).all(|_| quotas.check(&ClientId::from("batch")).is_ok()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientQuotas {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Nanoseconds since the handle was built, on its clock.
    elapsed: Box<dyn Fn() -> u64 + Send + Sync>,
    fingerprint: RandomState,
    default: Gcra,
    table: KeyTable,
    /// Overrides by fingerprint (already a keyed hash, so the map does not hash it again).
    overrides: HashMap<u64, Override, BuildHasherDefault<Identity>>,
    len: AtomicUsize,
    sweep_every_nanos: u64,
    /// When the next sweep is due, in nanoseconds since `origin`.
    next_sweep: AtomicU64,
    /// Clients replaced while their bucket was not full, so far.
    forgotten: AtomicU64,
    tracked: Gauge,
    evicted: Counter,
}

struct Override {
    gcra: Gcra,
    tat: AtomicU64,
}

/// The generic cell rate algorithm: one request costs `t`; up to `tau` of credit may be used
/// ahead (a burst of `tau / t + 1`). The same arithmetic as governor's, on `u64` nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    t: u64,
    tau: u64,
}

/// The longest window (`period × burst`) a quota may have: 2⁶² ns, about 146 years, so that
/// theoretical arrival times stay far inside `u64` nanoseconds.
const MAX_WINDOW_NANOS: u128 = 1 << 62;

impl Gcra {
    fn of(field: &'static str, quota: Quota) -> Result<Gcra, ConfigError> {
        let t = quota.replenish_interval().as_nanos().max(1);
        let burst = u128::from(quota.burst_size().get());
        if t * burst > MAX_WINDOW_NANOS {
            return Err(ConfigError::new(
                field,
                quota,
                "a quota whose period × burst is at most 2^62 ns (about 146 years)",
            ));
        }
        Ok(Gcra {
            t: t as u64,
            tau: (t * (burst - 1)) as u64,
        })
    }

    /// `Ok(new tat)` if a request at `now` conforms, else `Err(wait)`.
    #[inline]
    fn decide(self, tat: Option<u64>, now: u64) -> Result<u64, u64> {
        let tat = tat.unwrap_or(now);
        let earliest = tat.saturating_sub(self.tau);
        if now < earliest {
            Err(earliest - now)
        } else {
            Ok(tat.max(now) + self.t)
        }
    }
}

impl ClientQuotas {
    /// Starts a builder with the quota every client gets unless overridden; `name` labels the
    /// series.
    pub fn builder(name: impl Into<String>, default_quota: Quota) -> ClientQuotasBuilder {
        ClientQuotasBuilder {
            name: name.into(),
            default_quota,
            overrides: Vec::new(),
            max_keys: 100_000,
            sweep_every: Duration::from_secs(10),
            clock: None,
        }
    }

    /// Takes one request from `key`'s quota: `Err(wait)` when the client is over it, with the
    /// time until its next request would conform.
    pub fn check(&self, key: &ClientId) -> Result<(), Duration> {
        // Hash first, then read the clock: the table's line arrives meanwhile.
        let fp = self.prepare(key);
        self.check_prepared(fp, self.now())
    }

    /// [`check`](Self::check) at `now`, a reading of [`now`](Self::now) taken for this request.
    #[inline]
    pub(super) fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        self.check_prepared(self.prepare(key), now)
    }

    /// The first half of a check, before the clock is read: `key`'s fingerprint, with its
    /// place in the table already on its way into the cache, so that the table's miss and the
    /// clock read overlap.
    #[inline]
    pub(super) fn prepare(&self, key: &ClientId) -> u64 {
        let fp = self.inner.fingerprint.hash_one(key.as_bytes());
        self.inner.table.touch(fp);
        fp
    }

    /// The second half of a check: the decision on [`prepare`](Self::prepare)'s fingerprint
    /// at `now`.
    #[inline]
    pub(super) fn check_prepared(&self, fp: u64, now: u64) -> Result<(), Duration> {
        let i = &*self.inner;
        if !i.overrides.is_empty()
            && let Some(o) = i.overrides.get(&fp)
        {
            let mut prev = o.tat.load(Relaxed);
            loop {
                let next = o
                    .gcra
                    .decide((prev != 0).then_some(prev), now)
                    .map_err(Duration::from_nanos)?;
                match o.tat.compare_exchange_weak(prev, next, Relaxed, Relaxed) {
                    Ok(_) => return Ok(()),
                    Err(actual) => prev = actual,
                }
            }
        }
        let gcra = i.default;
        let (decision, change) = i.table.check(fp, now, |tat| gcra.decide(tat, now));
        match change {
            Change::None => {}
            Change::Added => {
                let len = i.len.fetch_add(1, Relaxed) + 1;
                i.tracked.set(len as f64);
                self.maybe_sweep(now);
            }
            Change::Replaced { lost } => {
                i.evicted.increment(1);
                if lost {
                    i.forgotten.fetch_add(1, Relaxed);
                }
                self.maybe_sweep(now);
            }
        }
        decision.map_err(Duration::from_nanos)
    }

    /// Clients tracked now (overrides not counted).
    pub fn tracked_keys(&self) -> usize {
        self.inner.len.load(Relaxed)
    }

    /// The most clients tracked at once: `max_keys`, rounded up to whole sets of 8.
    pub fn max_keys(&self) -> usize {
        self.inner.table.capacity()
    }

    /// Clients the table forgot to make room for a new one while their bucket was not full
    /// again, so far: each started again from a full bucket. Near zero unless the table is too
    /// small for the clients that are active at once.
    pub fn forgotten(&self) -> u64 {
        self.inner.forgotten.load(Relaxed)
    }

    /// Drops every client whose bucket is full again, now. New clients trigger this at most
    /// every `sweep_every`; call it from a timer task to see the count fall when traffic stops.
    pub fn sweep(&self) {
        let i = &self.inner;
        let dropped = i.table.sweep(self.now());
        if dropped > 0 {
            let len = i.len.fetch_sub(dropped, Relaxed) - dropped;
            i.evicted.increment(dropped as u64);
            i.tracked.set(len as f64);
        }
    }

    /// The handle's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Nanoseconds since the handle was built, on its [`Clock`].
    #[inline]
    pub(super) fn now(&self) -> u64 {
        (self.inner.elapsed)()
    }

    fn maybe_sweep(&self, now: u64) {
        let i = &self.inner;
        let due = i.next_sweep.load(Relaxed);
        // One request wins the sweep; the others go on.
        if now >= due
            && i.next_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(i.sweep_every_nanos),
                    Relaxed,
                    Relaxed,
                )
                .is_ok()
        {
            self.sweep();
        }
    }
}

impl fmt::Debug for ClientQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientQuotas")
            .field("name", &self.inner.name)
            .field("tracked_keys", &self.tracked_keys())
            .field("max_keys", &self.max_keys())
            .field("overrides", &self.inner.overrides.len())
            .finish_non_exhaustive()
    }
}

/// A time since build in nanoseconds, in 64-bit arithmetic the compiler can fold with the
/// clock's own split into seconds and nanoseconds (it wraps after 584 years).
#[inline(always)]
pub(super) fn elapsed_nanos(d: Duration) -> u64 {
    d.as_secs()
        .wrapping_mul(1_000_000_000)
        .wrapping_add(u64::from(d.subsec_nanos()))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The hasher of a map whose keys are fingerprints already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Builds [`ClientQuotas`].
#[derive(Debug, Clone)]
pub struct ClientQuotasBuilder {
    name: String,
    default_quota: Quota,
    overrides: Vec<(ClientId, Quota)>,
    max_keys: usize,
    sweep_every: Duration,
    clock: Option<Clock>,
}

impl ClientQuotasBuilder {
    /// Where the quotas read the time (default [`Clock::default()`], resolved at
    /// [`build`](Self::build)). Each request reads it once: a layer that sheds too hands the
    /// same reading to its [`ShedFraction`](super::ShedFraction).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Gives `key` its own quota instead of the default (a paying tenant, a batch job).
    /// Overridden clients do not count towards `max_keys`. Every quota (this one and the
    /// default) must have a window (`period × burst`) of at most 2⁶² ns, about 146 years.
    pub fn override_key(mut self, key: impl Into<ClientId>, quota: Quota) -> Self {
        self.overrides.push((key.into(), quota));
        self
    }

    /// The most clients tracked at once, in [1, 2²⁴ = 16,777,216] (default 100,000). The
    /// table takes 16 bytes per client, allocated at build.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How often clients whose bucket is full again are dropped (default 10 s; at least 1 ms;
    /// `Duration::MAX` never).
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = every;
        self
    }

    /// Checks the settings and builds the handle.
    pub fn build(self) -> Result<ClientQuotas, ConfigError> {
        let max_keys = check(
            "max_keys",
            self.max_keys,
            |n| (1..=MAX_KEYS).contains(n),
            "in [1, 16777216]",
        )?;
        let sweep_every = check(
            "sweep_every",
            self.sweep_every,
            |d| *d >= Duration::from_millis(1),
            "at least 1 ms",
        )?;
        let default = Gcra::of("default_quota", self.default_quota)?;
        let fingerprint = RandomState::default();
        let mut overrides = HashMap::default();
        for (key, quota) in self.overrides {
            let gcra = Gcra::of("override_key", quota)?;
            let fp = fingerprint.hash_one(key.as_bytes());
            overrides.insert(
                fp,
                Override {
                    gcra,
                    tat: AtomicU64::new(0),
                },
            );
        }
        names::describe_throttle();
        let label = self.name.clone();
        let tracked = gauge!(names::THROTTLE_TRACKED_KEYS, names::NAME_LABEL => label.clone());
        let evicted = counter!(names::THROTTLE_EVICTED_KEYS, names::NAME_LABEL => label);
        tracked.set(0.0);
        evicted.absolute(0);
        let sweep_every_nanos = nanos(sweep_every);
        let epoch = self.clock.unwrap_or_default().start();
        Ok(ClientQuotas {
            inner: Arc::new(Inner {
                name: self.name,
                elapsed: Box::new(move || elapsed_nanos(epoch.elapsed())),
                fingerprint,
                default,
                table: KeyTable::new(max_keys),
                overrides,
                len: AtomicUsize::new(0),
                sweep_every_nanos,
                next_sweep: AtomicU64::new(sweep_every_nanos),
                forgotten: AtomicU64::new(0),
                tracked,
                evicted,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn gcra_matches_governors_answers() {
        // 2 per second: t = 500 ms, burst 2.
        let g = Gcra::of("q", Quota::per_second(NonZeroU32::new(2).unwrap())).unwrap();
        let ms = 1_000_000;
        let tat = g.decide(None, 0).unwrap();
        let tat = g.decide(Some(tat), 0).unwrap();
        assert_eq!(g.decide(Some(tat), 0), Err(500 * ms));
        assert_eq!(g.decide(Some(tat), 500 * ms), Ok(1500 * ms));
    }

    #[test]
    fn windows_past_146_years_are_refused() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let long = Quota::with_period(year * 100).unwrap();
        assert!(Gcra::of("q", long).is_ok());
        let too_long = long.allow_burst(NonZeroU32::new(2).unwrap());
        assert_eq!(Gcra::of("q", too_long).unwrap_err().field(), "q");
        let max = Quota::with_period(Duration::MAX).unwrap();
        assert!(Gcra::of("q", max).is_err());
        assert!(Gcra::of("q", Quota::per_second(NonZeroU32::MAX)).is_ok());
    }
}
