//! [`ClientQuotas`]: per-client rate quotas on governor's GCRA, with bounded memory.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use super::key::ClientId;
use crate::error::{ConfigError, check};
use crate::metrics::names;

/// governor's clock, read from tokio's: time since the quotas were built. `tokio::time::pause`
/// therefore drives the quotas in tests.
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

type KeyedLimiter = RateLimiter<ClientId, CappedStore, TokioClock, NoOpMiddleware<Duration>>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Per-client rate quotas, shared by every layer and clone that holds the handle.
///
/// Each client gets governor's GCRA with the default [`Quota`], or its own override. A client
/// over its quota is refused until it is back under, with governor's wait as the hint.
///
/// # Memory
/// At most [`max_keys`](ClientQuotasBuilder::max_keys) clients are tracked (default 100,000).
/// When new clients arrive (the only time memory grows) or the table is full, at most every
/// [`sweep_every`](ClientQuotasBuilder::sweep_every) (default 10 s), one request pays for a
/// sweep that drops the clients whose bucket is full again: their state is the same as a
/// client never seen, so dropping them changes no decision. Call [`sweep`](Self::sweep) from a
/// timer to give memory back when traffic stops. When the table is full, clients
/// not in it share one overflow bucket with the default quota until a sweep makes room: a
/// flood of new keys cannot grow memory, and cannot get past the quota by being new.
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
    limiter: KeyedLimiter,
    /// The limiter's state, shared, for its counters.
    store: CappedStore,
    overrides: HashMap<ClientId, DirectLimiter>,
    sweep_every_nanos: u64,
    /// When the next sweep is due, in nanoseconds on the limiter's clock.
    next_sweep: AtomicU64,
    tracked: Gauge,
    evicted: Counter,
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
        }
    }

    /// Takes one request from `key`'s quota: `Err(wait)` when the client is over it, with the
    /// time until its next request would conform.
    pub fn check(&self, key: &ClientId) -> Result<(), Duration> {
        let i = &self.inner;
        let clock = i.limiter.clock();
        if let Some(limiter) = i.overrides.get(key) {
            return limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()));
        }
        // Memory grows only when new clients arrive, so that is when a sweep may be due (and
        // while the table is full, so that room is made as soon as it is); the request path of
        // known clients reads no clock for it.
        let store = &i.store.0;
        if store.grew.load(Relaxed) || store.len.load(Relaxed) >= store.cap {
            store.grew.store(false, Relaxed);
            self.maybe_sweep();
        }
        i.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    /// Clients tracked now (overrides not counted).
    pub fn tracked_keys(&self) -> usize {
        self.inner.limiter.len()
    }

    /// The most clients tracked at once.
    pub fn max_keys(&self) -> usize {
        self.store().cap
    }

    /// Checks that found the table full and used the shared overflow bucket, so far.
    pub fn overflowed(&self) -> u64 {
        self.store().overflowed.load(Relaxed)
    }

    /// Drops every client whose bucket is full again, now. New clients trigger this at most
    /// every `sweep_every`; call it from a timer task to give memory back when traffic stops.
    pub fn sweep(&self) {
        let i = &self.inner;
        let before = i.limiter.len();
        i.limiter.retain_recent();
        let after = i.limiter.len();
        i.evicted.increment(before.saturating_sub(after) as u64);
        i.tracked.set(after as f64);
    }

    /// The handle's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn store(&self) -> &StoreInner {
        &self.inner.store.0
    }

    fn maybe_sweep(&self) {
        let i = &self.inner;
        let now = nanos(i.limiter.clock().now());
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Builds [`ClientQuotas`].
#[derive(Debug, Clone)]
pub struct ClientQuotasBuilder {
    name: String,
    default_quota: Quota,
    overrides: Vec<(ClientId, Quota)>,
    max_keys: usize,
    sweep_every: Duration,
}

impl ClientQuotasBuilder {
    /// Gives `key` its own quota instead of the default (a paying tenant, a batch job).
    /// Overridden clients do not count towards `max_keys`.
    pub fn override_key(mut self, key: impl Into<ClientId>, quota: Quota) -> Self {
        self.overrides.push((key.into(), quota));
        self
    }

    /// The most clients tracked at once (default 100,000; at least 1).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How often idle clients are dropped (default 10 s; at least 1 ms).
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = every;
        self
    }

    /// Checks the settings and builds the handle.
    pub fn build(self) -> Result<ClientQuotas, ConfigError> {
        let max_keys = check("max_keys", self.max_keys, |n| *n >= 1, "at least 1")?;
        let sweep_every = check(
            "sweep_every",
            self.sweep_every,
            |d| *d >= Duration::from_millis(1),
            "at least 1 ms",
        )?;
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let store = CappedStore::new(max_keys);
        let limiter = RateLimiter::new(self.default_quota, store.clone(), clock);
        let overrides = self
            .overrides
            .into_iter()
            .map(|(key, quota)| (key, RateLimiter::direct_with_clock(quota, clock)))
            .collect();
        names::describe_throttle();
        let label = self.name.clone();
        let tracked = gauge!(names::THROTTLE_TRACKED_KEYS, names::NAME_LABEL => label.clone());
        let evicted = counter!(names::THROTTLE_EVICTED_KEYS, names::NAME_LABEL => label);
        tracked.set(0.0);
        evicted.absolute(0);
        Ok(ClientQuotas {
            inner: Arc::new(Inner {
                name: self.name,
                limiter,
                store,
                overrides,
                sweep_every_nanos: nanos(sweep_every),
                next_sweep: AtomicU64::new(nanos(sweep_every)),
                tracked,
                evicted,
            }),
        })
    }
}

/// Shards of the client table: enough that concurrent requests rarely meet on one lock.
const SHARDS: usize = 16;

/// governor's keyed state, with a hard cap on entries and a shared overflow state. The request
/// path takes one shard's read lock (as governor's own DashMap store does); inserting a new
/// client takes its write lock.
#[derive(Clone)]
struct CappedStore(Arc<StoreInner>);

struct StoreInner {
    shards: Box<[RwLock<HashMap<ClientId, InMemoryState>>]>,
    /// Seed of the shard choice. The maps inside use SipHash with random keys (client keys come
    /// from clients); the shard choice only needs spreading, so it takes the cheap mixer.
    shard_seed: u64,
    len: AtomicUsize,
    /// Set when a new client was inserted or overflowed: a sweep may be due.
    grew: std::sync::atomic::AtomicBool,
    cap: usize,
    overflow: InMemoryState,
    overflowed: AtomicU64,
}

impl CappedStore {
    fn new(cap: usize) -> Self {
        CappedStore(Arc::new(StoreInner {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            shard_seed: std::hash::RandomState::new().hash_one(0x5eed_u64),
            len: AtomicUsize::new(0),
            grew: std::sync::atomic::AtomicBool::new(false),
            cap,
            overflow: InMemoryState::default(),
            overflowed: AtomicU64::new(0),
        }))
    }

    fn shard(&self, key: &ClientId) -> &RwLock<HashMap<ClientId, InMemoryState>> {
        let s = &self.0;
        let h = super::shed::stable_hash(s.shard_seed, 0, key.as_bytes());
        &s.shards[(h as usize) % SHARDS]
    }
}

impl StateStore for CappedStore {
    type Key = ClientId;

    fn measure_and_replace<T, F, E>(&self, key: &ClientId, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(key);
        if let Some(state) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let s = &self.0;
        s.grew.store(true, Relaxed);
        let room = s
            .len
            .fetch_update(Relaxed, Relaxed, |n| (n < s.cap).then_some(n + 1));
        if room.is_err() {
            drop(map);
            s.overflowed.fetch_add(1, Relaxed);
            return s.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        map.entry(key.clone())
            .or_default()
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<ClientId> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in &self.0.shards {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, state| !is_older_than(state, drop_below));
            self.0.len.fetch_sub(before - map.len(), Relaxed);
            // Give memory back after a flood.
            if map.capacity() > 4 * map.len().max(16) {
                map.shrink_to_fit();
            }
        }
    }

    fn shrink_to_fit(&self) {
        for shard in &self.0.shards {
            shard
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.0.len.load(Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a state's theoretical arrival time is at or before `drop_below` (governor keeps this
/// test private; reading the state with a measurement that declines to update it gives the same
/// answer).
fn is_older_than(state: &InMemoryState, drop_below: Nanos) -> bool {
    let tat = state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten();
    tat.is_none_or(|t| t.as_u64() <= drop_below.as_u64())
}
