//! [`FleetQuotas`]: one quota per client for a whole fleet, kept in Redis, spent locally.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::Quota;
use metrics::{Counter, Gauge, counter, gauge};
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::time::Instant;

use super::script::{LEASE_SCRIPT, Lease, parse};
use super::table::{Entry, Identity, LeaseTable, MAX_KEYS};
use crate::error::{ConfigError, check};
use crate::metrics::names;
use crate::throttle::{ClientId, QuotaStore, stable_hash};

/// One quota per client shared by every process of a fleet, kept in Redis (or Valkey) and spent
/// locally in leases; see the [module docs](super) for the design, its costs and its bounds.
///
/// Cloning is cheap: clones share the table, the connection and the counters.
#[derive(Clone)]
pub struct FleetQuotas {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    process_id: String,
    prefix: String,
    seed: u64,
    origin: Instant,
    client: Client,
    conn: Mutex<Option<ConnectionManager>>,
    script: Script,
    default: Rate,
    overrides: HashMap<u64, Rate, BuildHasherDefault<Identity>>,
    table: LeaseTable,
    lease_period: u64,
    max_lease: u32,
    lease_ttl: u64,
    call_timeout: Duration,
    retry_every: u64,
    live_window: Duration,
    expected_processes: u32,
    /// Redis failed and has not answered since: every client runs on its local share.
    degraded: AtomicBool,
    /// When the next probe of a failed Redis is due (ns); the request that wins the swap sends it.
    next_probe: AtomicU64,
    /// Processes serving any client, as Redis last counted them (0: never).
    last_live: AtomicU32,
    stats: Stats,
    calls_ok: Counter,
    calls_failed: Counter,
    fallback: Counter,
    degraded_gauge: Gauge,
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    failed_calls: AtomicU64,
    leased_tokens: AtomicU64,
    from_lease: AtomicU64,
    from_share: AtomicU64,
    fallback_admitted: AtomicU64,
    fallback_refused: AtomicU64,
    refused: AtomicU64,
    forgotten: AtomicU64,
}

/// A quota as the script takes it: µs per token and the burst.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Nanoseconds per token.
    t: u64,
    burst: u32,
}

/// The longest window (`period × burst`) a quota may have: 2⁶² ns, about 146 years, as for
/// [`ClientQuotas`](crate::throttle::ClientQuotas).
const MAX_WINDOW_NANOS: u128 = 1 << 62;

impl Rate {
    fn of(field: &'static str, quota: Quota) -> Result<Rate, ConfigError> {
        let t = quota.replenish_interval().as_nanos().max(1);
        let burst = quota.burst_size().get();
        if t * u128::from(burst) > MAX_WINDOW_NANOS {
            return Err(ConfigError::new(
                field,
                quota,
                "a quota whose period × burst is at most 2^62 ns (about 146 years)",
            ));
        }
        Ok(Rate { t: t as u64, burst })
    }

    /// The GCRA of `1 / live` of this quota: its rate and its burst split evenly.
    fn share(self, live: u32) -> (u64, u64) {
        let live = u64::from(live.max(1));
        let t = self.t.saturating_mul(live);
        let burst = (u64::from(self.burst) / live).max(1);
        (t, t.saturating_mul(burst - 1))
    }
}

/// Counts of what a [`FleetQuotas`] handle did, since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FleetStats {
    /// Lease calls sent to Redis (each is one round trip).
    pub redis_calls: u64,
    /// Lease calls that failed: an error, garbage, or no answer within the call timeout.
    pub failed_calls: u64,
    /// Tokens Redis granted in leases.
    pub leased_tokens: u64,
    /// Requests admitted from a lease.
    pub admitted_from_lease: u64,
    /// Requests admitted from the local share while Redis was reachable (no lease yet, or one
    /// on its way): charged to the fleet's bucket at the next call.
    pub admitted_from_share: u64,
    /// Requests admitted from the local share while Redis was failing (not charged).
    pub fallback_admitted: u64,
    /// Requests refused from the local share while Redis was failing.
    pub fallback_refused: u64,
    /// Requests refused in all.
    pub refused: u64,
    /// Clients the local table forgot to make room for new ones.
    pub forgotten: u64,
    /// Processes serving a client, as Redis last counted them (0 before its first answer).
    pub live_processes: u32,
    /// Whether the handle is running on local shares now (Redis failed and has not answered
    /// since).
    pub degraded: bool,
}

impl FleetQuotas {
    /// Starts a builder: `name` labels the series and the Redis keys, `redis_url` is any URL the
    /// `redis` crate accepts (`redis://host:port/db`, `rediss://…`, `unix://…`), and every
    /// client gets `default_quota` across the fleet unless overridden. A quota of 0 cannot be
    /// written (`Quota` counts from 1); to refuse a client outright, shed it
    /// ([`ShedFraction`](crate::throttle::ShedFraction)) or reject its key upstream.
    pub fn builder(
        name: impl Into<String>,
        redis_url: impl Into<String>,
        default_quota: Quota,
    ) -> FleetQuotasBuilder {
        FleetQuotasBuilder {
            name: name.into(),
            redis_url: redis_url.into(),
            default_quota,
            overrides: Vec::new(),
            seed: 0,
            key_prefix: None,
            lease_period: Duration::from_millis(200),
            max_lease: 64,
            lease_ttl: Duration::from_secs(1),
            call_timeout: Duration::from_millis(100),
            retry_every: Duration::from_millis(500),
            live_window: Duration::from_secs(10),
            max_keys: 10_000,
            expected_processes: 1,
        }
    }

    /// Takes one request from `key`'s fleet-wide quota, deciding locally (never waiting on
    /// Redis): `Err(wait)` when the client is over it.
    pub fn check(&self, key: &ClientId) -> Result<(), Duration> {
        self.check_at(key, self.now())
    }

    /// [`check`](Self::check) at `now` (nanoseconds from [`QuotaStore::now`]).
    fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        let i = &*self.inner;
        let bytes = key.as_bytes();
        let fp = stable_hash(i.seed, FP_EPOCHS[0], bytes);
        let rate = if i.overrides.is_empty() {
            i.default
        } else {
            i.overrides.get(&fp).copied().unwrap_or(i.default)
        };
        let degraded = i.degraded.load(Relaxed);
        let mut shard = i.table.shard(fp);
        let (e, forgot) = i.table.entry(&mut shard, fp, now);
        if forgot {
            i.stats.forgotten.fetch_add(1, Relaxed);
        }
        e.hits = e.hits.saturating_add(1);
        e.seen = e.seen.saturating_add(1);
        if e.tokens > 0 && now >= e.lease_expires {
            e.tokens = 0;
        }
        let decision = if e.tokens > 0 {
            e.tokens -= 1;
            i.stats.from_lease.fetch_add(1, Relaxed);
            Ok(())
        } else if !degraded && now < e.dry_until {
            Err(e.dry_until - now)
        } else {
            // No lease to spend and no "dry" from Redis: this process's share of the quota.
            let live = match e.live {
                0 => match i.last_live.load(Relaxed) {
                    0 => i.expected_processes,
                    n => n,
                },
                n => n,
            };
            let (t, tau) = rate.share(live);
            let tat = if e.share_tat == 0 { now } else { e.share_tat };
            let earliest = tat.saturating_sub(tau);
            let d = if now < earliest {
                Err(earliest - now)
            } else {
                e.share_tat = tat.max(now).saturating_add(t);
                Ok(())
            };
            match (d.is_ok(), degraded) {
                (true, false) => {
                    e.debt = e.debt.saturating_add(1);
                    i.stats.from_share.fetch_add(1, Relaxed);
                }
                (true, true) => {
                    i.stats.fallback_admitted.fetch_add(1, Relaxed);
                    i.fallback.increment(1);
                }
                (false, true) => {
                    i.stats.fallback_refused.fetch_add(1, Relaxed);
                    i.fallback.increment(1);
                }
                (false, false) => {}
            }
            d
        };
        // Ask Redis ahead of need: when half the last lease is spent, so the next one arrives
        // before this one runs out.
        let ask = !e.in_flight
            && if degraded {
                self.probe_due(now)
            } else {
                now >= e.dry_until && e.tokens.saturating_mul(2) <= e.want
            };
        let call = if ask {
            let want = self.lease_size(e, rate, now);
            e.in_flight = true;
            e.want = want;
            e.seen = 0;
            e.last_call = now;
            Some((want, std::mem::take(&mut e.debt)))
        } else {
            None
        };
        drop(shard);
        if let Some((want, debt)) = call {
            // The second half of the name is needed only to call.
            let fp2 = stable_hash(i.seed, FP_EPOCHS[1], bytes);
            self.spawn_call(fp, fp2, rate, want, if degraded { 0 } else { debt });
        }
        if decision.is_err() {
            i.stats.refused.fetch_add(1, Relaxed);
        }
        decision.map_err(Duration::from_nanos)
    }

    /// The Redis keys of `key`'s bucket and of the set of processes serving it. Their length
    /// does not depend on the key's: the name is a 128-bit fingerprint of it.
    pub fn redis_keys(&self, key: &ClientId) -> (String, String) {
        let i = &*self.inner;
        let bytes = key.as_bytes();
        let fp = stable_hash(i.seed, FP_EPOCHS[0], bytes);
        let fp2 = stable_hash(i.seed, FP_EPOCHS[1], bytes);
        self.keys_of(fp, fp2)
    }

    fn keys_of(&self, fp: u64, fp2: u64) -> (String, String) {
        // The braces are a cluster hash tag: both keys of a client land on one slot, as a
        // script touching two keys needs.
        let bucket = format!("{}{{{fp:016x}{fp2:016x}}}", self.inner.prefix);
        let procs = format!("{bucket}:p");
        (bucket, procs)
    }

    /// What the handle did so far.
    pub fn stats(&self) -> FleetStats {
        let s = &self.inner.stats;
        FleetStats {
            redis_calls: s.calls.load(Relaxed),
            failed_calls: s.failed_calls.load(Relaxed),
            leased_tokens: s.leased_tokens.load(Relaxed),
            admitted_from_lease: s.from_lease.load(Relaxed),
            admitted_from_share: s.from_share.load(Relaxed),
            fallback_admitted: s.fallback_admitted.load(Relaxed),
            fallback_refused: s.fallback_refused.load(Relaxed),
            refused: s.refused.load(Relaxed),
            forgotten: s.forgotten.load(Relaxed),
            live_processes: self.inner.last_live.load(Relaxed),
            degraded: self.inner.degraded.load(Relaxed),
        }
    }

    /// The most clients the local table holds (`max_keys` rounded up to whole shards).
    pub fn max_keys(&self) -> usize {
        self.inner.table.capacity()
    }

    /// This process's id in the Redis sets of live processes (random, drawn at build).
    pub fn process_id(&self) -> &str {
        &self.inner.process_id
    }

    /// The handle's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.inner.origin))
    }

    /// Only one probe of a failed Redis every `retry_every`, whatever the request rate.
    fn probe_due(&self, now: u64) -> bool {
        let i = &self.inner;
        let due = i.next_probe.load(Relaxed);
        now >= due
            && i.next_probe
                .compare_exchange(due, now.saturating_add(i.retry_every), Relaxed, Relaxed)
                .is_ok()
    }

    /// The lease to ask for: the requests this client sent here over the last `lease_period`
    /// at its recent rate, at least 1, at most `max_lease` and the quota's burst. The first
    /// call knows no rate yet and asks for 1.
    fn lease_size(&self, e: &Entry, rate: Rate, now: u64) -> u32 {
        let i = &self.inner;
        let cap = i.max_lease.min(rate.burst).max(1);
        if e.calls == 0 {
            return 1;
        }
        let elapsed = now.saturating_sub(e.last_call).max(1_000_000);
        let want = (u128::from(e.seen) * u128::from(i.lease_period)).div_ceil(u128::from(elapsed));
        want.clamp(1, u128::from(cap)) as u32
    }

    fn spawn_call(&self, fp: u64, fp2: u64, rate: Rate, want: u32, debt: u32) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to talk to Redis from: the request path never blocks, so this
            // process stays on its local share.
            self.finish_call(fp, Err("no tokio runtime".into()), want);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let i = &this.inner;
            let (bucket, procs) = this.keys_of(fp, fp2);
            let conn = this.connection();
            let call = async {
                let mut conn = conn?;
                let reply: Vec<i64> = i
                    .script
                    .key(bucket)
                    .key(procs)
                    .arg((rate.t as f64 / 1000.0).to_string())
                    .arg(rate.burst)
                    .arg(want)
                    .arg(debt)
                    .arg(&i.process_id)
                    .arg(i.live_window.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                parse(&reply, want)
            };
            let result = match tokio::time::timeout(i.call_timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", i.call_timeout)),
            };
            this.finish_call(fp, result, want);
        });
    }

    fn connection(&self) -> Result<ConnectionManager, String> {
        let i = &self.inner;
        let mut conn = i.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*conn {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(i.call_timeout))
            .set_response_timeout(Some(i.call_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_nanos(i.retry_every));
        let c = ConnectionManager::new_lazy_with_config(i.client.clone(), config)
            .map_err(|e| e.to_string())?;
        *conn = Some(c.clone());
        Ok(c)
    }

    fn finish_call(&self, fp: u64, result: Result<Lease, String>, want: u32) {
        let i = &*self.inner;
        let now = self.now();
        i.stats.calls.fetch_add(1, Relaxed);
        match &result {
            Ok(lease) => {
                i.calls_ok.increment(1);
                i.stats
                    .leased_tokens
                    .fetch_add(u64::from(lease.granted), Relaxed);
                i.last_live.store(lease.live, Relaxed);
                if i.degraded.swap(false, Relaxed) {
                    i.degraded_gauge.set(0.0);
                }
            }
            Err(_) => {
                i.calls_failed.increment(1);
                i.stats.failed_calls.fetch_add(1, Relaxed);
                i.next_probe
                    .store(now.saturating_add(i.retry_every), Relaxed);
                if !i.degraded.swap(true, Relaxed) {
                    i.degraded_gauge.set(1.0);
                }
            }
        }
        let mut shard = i.table.shard(fp);
        // The client may have been replaced while the call was out: its lease is then lost,
        // which can only admit less.
        let Some(e) = shard.get_mut(&fp) else { return };
        e.in_flight = false;
        if let Ok(lease) = result {
            e.calls = e.calls.saturating_add(1);
            e.live = lease.live;
            e.tokens = e.tokens.saturating_add(lease.granted);
            e.lease_expires = now.saturating_add(i.lease_ttl);
            e.dry_until = if lease.granted < want {
                now.saturating_add(nanos(lease.wait))
            } else {
                0
            };
        }
    }
}

/// The two hash epochs whose fingerprints name a client: 128 bits in all.
const FP_EPOCHS: [u64; 2] = [0xf1ee_7000, 0xf1ee_7001];

impl QuotaStore for FleetQuotas {
    fn check(&self, key: &ClientId) -> Result<(), Duration> {
        FleetQuotas::check(self, key)
    }

    fn now(&self) -> Option<u64> {
        Some(FleetQuotas::now(self))
    }

    fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        FleetQuotas::check_at(self, key, now)
    }
}

impl fmt::Debug for FleetQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("FleetQuotas")
            .field("name", &i.name)
            .field("process_id", &i.process_id)
            .field("prefix", &i.prefix)
            .field("max_lease", &i.max_lease)
            .field("degraded", &i.degraded.load(Relaxed))
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Builds [`FleetQuotas`]; [`build`](Self::build) checks every value and does not connect.
#[derive(Clone)]
pub struct FleetQuotasBuilder {
    name: String,
    redis_url: String,
    default_quota: Quota,
    overrides: Vec<(ClientId, Quota)>,
    seed: u64,
    key_prefix: Option<String>,
    lease_period: Duration,
    max_lease: u32,
    lease_ttl: Duration,
    call_timeout: Duration,
    retry_every: Duration,
    live_window: Duration,
    max_keys: usize,
    expected_processes: u32,
}

impl fmt::Debug for FleetQuotasBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: not shown.
        f.debug_struct("FleetQuotasBuilder")
            .field("name", &self.name)
            .field("default_quota", &self.default_quota)
            .field("overrides", &self.overrides.len())
            .field("lease_period", &self.lease_period)
            .field("max_lease", &self.max_lease)
            .field("lease_ttl", &self.lease_ttl)
            .field("call_timeout", &self.call_timeout)
            .field("retry_every", &self.retry_every)
            .field("max_keys", &self.max_keys)
            .field("expected_processes", &self.expected_processes)
            .finish_non_exhaustive()
    }
}

impl FleetQuotasBuilder {
    /// Gives `key` its own fleet-wide quota instead of the default. Any quota whose window
    /// (`period × burst`) is at most 2⁶² ns is accepted.
    pub fn override_key(mut self, key: impl Into<ClientId>, quota: Quota) -> Self {
        self.overrides.push((key.into(), quota));
        self
    }

    /// The seed of the fingerprints that name clients in Redis (default 0). Every process of
    /// the fleet must use the same one; a secret seed keeps clients from searching offline for
    /// keys whose fingerprints collide with another client's.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The prefix of every Redis key of this handle (default `backstop:quota:<name>:`); 1 to
    /// 128 bytes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// How much demand a lease covers: a lease is the requests the client sent to this process
    /// over this long at its recent rate (default 200 ms; in [1 ms, 60 s]). Longer means fewer
    /// round trips and more tokens held locally.
    pub fn lease_period(mut self, period: Duration) -> Self {
        self.lease_period = period;
        self
    }

    /// The most tokens one lease takes (default 64; in [1, 1,000,000]): with the process count,
    /// it bounds how far the fleet can go over a quota (see the module docs).
    pub fn max_lease(mut self, tokens: u32) -> Self {
        self.max_lease = tokens;
        self
    }

    /// How long leased tokens stay spendable (default 1 s; in [1 ms, 1 h]); unspent ones then
    /// lapse (the fleet admits less, never more).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The longest a call to Redis may take before this process treats Redis as failed and
    /// runs on its local share (default 100 ms; in [1 ms, 60 s]). No request waits for it:
    /// calls run on their own tasks.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// While Redis is failing, how often one probe is sent (default 500 ms; in [1 ms, 1 h]).
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = every;
        self
    }

    /// How long a process that stopped calling for a client still counts among the processes
    /// serving it, whose number splits the quota when Redis fails (default 10 s; in
    /// [1 s, 1 h]).
    pub fn live_window(mut self, window: Duration) -> Self {
        self.live_window = window;
        self
    }

    /// The most clients this process tracks at once (default 10,000; in [1, 2²² =
    /// 4,194,304]), allocated at build.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The processes to split a quota among before Redis has ever answered (default 1; in
    /// [1, 65,535]). After the first answer, the count Redis keeps is used.
    pub fn expected_processes(mut self, n: u32) -> Self {
        self.expected_processes = n;
        self
    }

    /// Checks the settings and builds the handle. It does not connect: the first lease call
    /// does, on its own task, and until Redis answers the process serves from its local share.
    pub fn build(self) -> Result<FleetQuotas, ConfigError> {
        let client = Client::open(self.redis_url.as_str()).map_err(|_| {
            ConfigError::new(
                "redis_url",
                "(not shown: it may hold a password)",
                "a URL the redis crate accepts: redis://host:port/db, rediss://… or unix://…",
            )
        })?;
        let ms = Duration::from_millis;
        let lease_period = check(
            "lease_period",
            self.lease_period,
            |d| (ms(1)..=ms(60_000)).contains(d),
            "in [1 ms, 60 s]",
        )?;
        let max_lease = check(
            "max_lease",
            self.max_lease,
            |n| (1..=1_000_000).contains(n),
            "in [1, 1000000]",
        )?;
        let lease_ttl = check(
            "lease_ttl",
            self.lease_ttl,
            |d| (ms(1)..=ms(3_600_000)).contains(d),
            "in [1 ms, 1 h]",
        )?;
        let call_timeout = check(
            "call_timeout",
            self.call_timeout,
            |d| (ms(1)..=ms(60_000)).contains(d),
            "in [1 ms, 60 s]",
        )?;
        let retry_every = check(
            "retry_every",
            self.retry_every,
            |d| (ms(1)..=ms(3_600_000)).contains(d),
            "in [1 ms, 1 h]",
        )?;
        let live_window = check(
            "live_window",
            self.live_window,
            |d| (ms(1000)..=ms(3_600_000)).contains(d),
            "in [1 s, 1 h]",
        )?;
        let max_keys = check(
            "max_keys",
            self.max_keys,
            |n| (1..=MAX_KEYS).contains(n),
            "in [1, 4194304]",
        )?;
        let expected_processes = check(
            "expected_processes",
            self.expected_processes,
            |n| (1..=65_535).contains(n),
            "in [1, 65535]",
        )?;
        let prefix = self
            .key_prefix
            .unwrap_or_else(|| format!("backstop:quota:{}:", self.name));
        let prefix = check(
            "key_prefix",
            prefix,
            |p| (1..=128).contains(&p.len()),
            "1 to 128 bytes",
        )?;
        let default = Rate::of("default_quota", self.default_quota)?;
        let mut overrides = HashMap::default();
        for (key, quota) in self.overrides {
            let fp = stable_hash(self.seed, FP_EPOCHS[0], key.as_bytes());
            overrides.insert(fp, Rate::of("override_key", quota)?);
        }
        names::describe_fleet_quota();
        let label = self.name.clone();
        let calls = |outcome: &'static str| {
            let c = counter!(names::FLEET_QUOTA_REDIS_CALLS, names::NAME_LABEL => label.clone(), names::OUTCOME_LABEL => outcome);
            c.absolute(0);
            c
        };
        let calls_ok = calls("ok");
        let calls_failed = calls("failed");
        let fallback = counter!(names::FLEET_QUOTA_FALLBACK, names::NAME_LABEL => label.clone());
        fallback.absolute(0);
        let degraded_gauge = gauge!(names::FLEET_QUOTA_DEGRADED, names::NAME_LABEL => label);
        degraded_gauge.set(0.0);
        Ok(FleetQuotas {
            inner: Arc::new(Inner {
                name: self.name,
                process_id: format!("{:016x}", rand::random::<u64>()),
                prefix,
                seed: self.seed,
                origin: Instant::now(),
                client,
                conn: Mutex::new(None),
                script: Script::new(LEASE_SCRIPT),
                default,
                overrides,
                table: LeaseTable::new(max_keys),
                lease_period: nanos(lease_period),
                max_lease,
                lease_ttl: nanos(lease_ttl),
                call_timeout,
                retry_every: nanos(retry_every),
                live_window,
                expected_processes,
                degraded: AtomicBool::new(false),
                next_probe: AtomicU64::new(0),
                last_live: AtomicU32::new(0),
                stats: Stats::default(),
                calls_ok,
                calls_failed,
                fallback,
                degraded_gauge,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn quota(n: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(n).unwrap())
    }

    /// Nothing listens on port 1: every call fails, and the handle runs on its share.
    fn unreachable(q: Quota, processes: u32) -> FleetQuotas {
        FleetQuotas::builder("t", "redis://127.0.0.1:1/", q)
            .expected_processes(processes)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_share_is_the_quota_split_over_the_processes() {
        let f = unreachable(quota(100), 4);
        let k = ClientId::from("k");
        // 100/s over 4 processes: 25/s, burst 25.
        assert!((0..25).all(|_| f.check(&k).is_ok()));
        assert_eq!(f.check(&k), Err(Duration::from_millis(40)));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(f.check(&k).is_ok());
        assert!(f.check(&k).is_err());
        // Another client has its own share.
        assert!(f.check(&ClientId::from("other")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_redis_means_one_probe_per_retry_every() {
        let f = FleetQuotas::builder("t", "redis://127.0.0.1:1/", quota(1000))
            .retry_every(Duration::from_millis(500))
            .build()
            .unwrap();
        let k = ClientId::from("k");
        assert!(f.check(&k).is_ok());
        // Let the first call fail (connection refused, or the call timeout on the paused clock).
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if f.stats().degraded {
                break;
            }
        }
        assert!(f.stats().degraded);
        let calls = f.stats().redis_calls;
        // 400 ms of requests at 1 per ms: no probe is due yet.
        for _ in 0..400 {
            let _ = f.check(&k);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        tokio::task::yield_now().await;
        assert_eq!(f.stats().redis_calls, calls);
        assert!(f.stats().fallback_admitted > 0);
        // Past the due time, 200 more requests send exactly one probe.
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..200 {
            let _ = f.check(&k);
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if f.stats().redis_calls > calls {
                break;
            }
        }
        assert_eq!(f.stats().redis_calls, calls + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overridden_client_has_its_own_quota() {
        let f = FleetQuotas::builder("t", "redis://127.0.0.1:1/", quota(10))
            .override_key("batch", quota(100))
            .build()
            .unwrap();
        let admitted = |key: &str| {
            let k = ClientId::from(key);
            (0..200).filter(|_| f.check(&k).is_ok()).count()
        };
        assert_eq!(admitted("batch"), 100);
        assert_eq!(admitted("anyone"), 10);
    }

    #[test]
    fn leases_follow_the_recent_rate_within_their_bounds() {
        let f = unreachable(quota(1000), 1);
        let rate = f.inner.default;
        let ms = 1_000_000;
        let e = |seen, calls| Entry {
            seen,
            calls,
            last_call: 0,
            ..Entry::default()
        };
        // No rate known yet: one token.
        assert_eq!(f.lease_size(&e(50, 0), rate, 100 * ms), 1);
        // 50 requests in 100 ms is 500/s: 100 over the 200 ms period, capped at max_lease 64.
        assert_eq!(f.lease_size(&e(50, 1), rate, 100 * ms), 64);
        // 10 in 200 ms: 10.
        assert_eq!(f.lease_size(&e(10, 1), rate, 200 * ms), 10);
        // A burst smaller than max_lease caps it.
        let small = Rate { t: ms, burst: 5 };
        assert_eq!(f.lease_size(&e(50, 1), small, 100 * ms), 5);
    }
}
