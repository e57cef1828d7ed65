use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, counter};
use tower_layer::Layer;

use super::error::MissingClientKey;
use super::key::{ClientId, ClientKey, MissingKey};
use super::quota::ClientQuotas;
use super::service::Throttle;
use super::shed::{Cut, ShedFraction, stable_hash_from, stable_prefix};
use super::store::QuotaStore;
use crate::context::{ByCriticality, Criticality, SameCriticality};
use crate::error::{BoxError, ConfigError, OverloadReason, Overloaded, check};
use crate::metrics::names;
use crate::metrics::publish;
use crate::metrics::shard::Sharded;

/// Throttles whole clients: sheds the fraction of clients a [`ShedFraction`] asks for and
/// holds each client to its quota ([`ClientQuotas`](super::ClientQuotas) or another
/// [`QuotaStore`]); see the [module docs](super).
///
/// Every service this layer makes shares its handles.
///
/// A request whose key extractor finds no client is handled as
/// [`missing_key`](ThrottleLayerBuilder::missing_key) says (by default all such requests are
/// one shared client) and counted in `backstop_throttle_keyless_requests_total`. Over HTTP,
/// [`HeaderKey`](super::HeaderKey) finds few such requests: it falls back to the remote
/// address when the header is missing.
///
/// ```
/// use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ThrottleLayer};
/// use std::num::NonZeroU32;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let quotas = ClientQuotas::builder("api", Quota::per_second(NonZeroU32::new(1).unwrap())).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(ThrottleLayer::builder("api", HeaderKey::default()).quotas(quotas).build()?)
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, backstop::BoxError>("ok") });
/// let from_alice = || http::Request::builder().header("x-client-id", "alice").body(()).unwrap();
/// assert!(svc.clone().oneshot(from_alice()).await.is_ok());
/// let refused = svc.oneshot(from_alice()).await.unwrap_err(); // over alice's 1/s
/// assert!(backstop::is_overload(refused.as_ref()));
/// # Ok(())
/// # }
/// ```
pub struct ThrottleLayer<K, C = SameCriticality> {
    policy: Arc<Policy<K>>,
    criticality: C,
}

impl<K, C: Clone> Clone for ThrottleLayer<K, C> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            policy: self.policy.clone(),
            criticality: self.criticality.clone(),
        }
    }
}

impl<K, C> fmt::Debug for ThrottleLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.policy.fmt(f)
    }
}

impl<K> ThrottleLayer<K> {
    /// Starts a builder whose series carry `name`, finding each request's client with `key`.
    pub fn builder(name: impl Into<String>, key: K) -> ThrottleLayerBuilder<K> {
        ThrottleLayerBuilder {
            key,
            name: name.into(),
            missing: MissingKey::default(),
            shed: None,
            quotas: None,
            shed_retry_after: Duration::from_secs(1),
        }
    }
}

impl<K, C> ThrottleLayer<K, C> {
    /// Sheds by [`Criticality`]: the shed fraction is split over the levels, lowest first
    /// ([`ShedFraction::is_shed_at`]), so a client's sheddable requests are refused before
    /// any client's critical ones. A request's level is its own tag, else its scope's, else
    /// `default`. Quotas are not affected.
    pub fn by_criticality(self, default: Criticality) -> ThrottleLayer<K, ByCriticality> {
        ThrottleLayer {
            policy: self.policy,
            criticality: ByCriticality::new(default),
        }
    }

    /// The shed fraction handle, if any.
    pub fn shed(&self) -> Option<&ShedFraction> {
        self.policy.shed.as_ref()
    }

    /// The quota store, if any.
    pub fn quotas(&self) -> Option<&dyn QuotaStore> {
        self.policy.quotas.as_ref().map(Store::as_dyn)
    }

    /// Pushes the layer's decision counts to its series now.
    ///
    /// The layer counts decisions in its own per-thread counters and publishes them by itself
    /// at most every 100 ms at a request that reads the clock (every request of a layer with
    /// quotas), and every 1,024 requests a thread serves through this layer without reading
    /// it; so the request path makes no `metrics` call. `backstop::metrics::publish()` publishes every live
    /// throttle too: call it before rendering a scrape for figures exact to the last request.
    pub fn publish(&self) {
        self.policy.series.publish();
    }
}

impl<S, K, C: Clone> Layer<S> for ThrottleLayer<K, C> {
    type Service = Throttle<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle::new(inner, self.policy.clone(), self.criticality.clone())
    }
}

/// Builds a [`ThrottleLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct ThrottleLayerBuilder<K> {
    key: K,
    name: String,
    missing: MissingKey,
    shed: Option<ShedFraction>,
    quotas: Option<Store>,
    shed_retry_after: Duration,
}

impl<K> ThrottleLayerBuilder<K> {
    /// What to do with requests whose key extractor finds no client (see [`MissingKey`]).
    /// Default: [`MissingKey::Shared`], one client for all of them. Every such request is
    /// counted in `backstop_throttle_keyless_requests_total`.
    pub fn missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// Sheds the fraction of clients this handle asks for.
    pub fn shed(mut self, shed: ShedFraction) -> Self {
        self.shed = Some(shed);
        self
    }

    /// Holds each client to its quota: a [`ClientQuotas`](super::ClientQuotas) in this
    /// process, or any other [`QuotaStore`] (with the `redis` feature, a fleet-wide
    /// `FleetQuotas`).
    pub fn quotas(mut self, quotas: impl QuotaStore) -> Self {
        self.quotas = Some(Store::new(quotas));
        self
    }

    /// The `retry_after` hint given to shed clients (default 1 s; greater than zero, any
    /// longer value is accepted, an HTTP answer saturates it). The choice changes only when the
    /// fraction falls or the epoch turns, so a longer hint is honest when the signal moves
    /// slowly.
    pub fn shed_retry_after(mut self, after: Duration) -> Self {
        self.shed_retry_after = after;
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<ThrottleLayer<K>, ConfigError> {
        if self.shed.is_none() && self.quotas.is_none() {
            return Err(ConfigError::new(
                "shed",
                "none",
                "set, or quotas set (a throttle needs a ShedFraction, ClientQuotas, or both)",
            ));
        }
        let shed_retry_after = check(
            "shed_retry_after",
            self.shed_retry_after,
            |d| !d.is_zero(),
            "greater than zero",
        )?;
        let series = Series::register(&self.name);
        let weak = Arc::downgrade(&series);
        publish::register(move || weak.upgrade().map(|s| s.publish()).is_some());
        let timed = self.quotas.as_ref().is_some_and(|q| q.now().is_some());
        Ok(ThrottleLayer {
            policy: Arc::new(Policy {
                key: self.key,
                name: self.name,
                missing: self.missing,
                shed: self.shed,
                quotas: self.quotas,
                timed,
                shed_retry_after,
                epoch_until: AtomicU64::new(0),
                epoch_prefix: AtomicU64::new(0),
                next_publish: AtomicU64::new(PUBLISH_EVERY_NANOS),
                series,
            }),
            criticality: SameCriticality,
        })
    }
}

/// How often a layer publishes its counts by itself, at most (on the quotas' clock).
const PUBLISH_EVERY_NANOS: u64 = 100_000_000;

/// A thread publishes after this many requests that read no clock.
const PUBLISH_EVERY_UNTIMED: u64 = 1024;
/// `epoch_until` while one thread stores the next epoch's prefix and end.
const REFRESHING: u64 = u64::MAX;

// The layer's counts, one sharded counter each.
const ADMITTED: usize = 0;
const SHED: usize = 1;
const QUOTA: usize = 2;
const MISSING: usize = 3;
const KEYLESS: usize = 4;
/// Shed refusals by criticality level, then quota refusals by level.
const SHED_AT: usize = 5;
const QUOTA_AT: usize = SHED_AT + LEVELS;
const COUNTS: usize = QUOTA_AT + LEVELS;
const LEVELS: usize = Criticality::ALL.len();

/// The layer's series and the counts they are published from.
struct Series {
    counts: Sharded<COUNTS>,
    /// Requests served without a clock reading, by thread: when those publish.
    untimed: Sharded<1>,
    /// The counts last published, so each publication adds what is new.
    published: Mutex<[u64; COUNTS]>,
    counters: [Counter; COUNTS],
}

impl Series {
    fn register(name: &str) -> Arc<Series> {
        names::describe_throttle();
        let decision = |d: &'static str| counter!(names::THROTTLE_REQUESTS, names::NAME_LABEL => name.to_owned(), names::DECISION_LABEL => d);
        let [admitted, shed, quota, missing] = names::THROTTLE_DECISIONS.map(decision);
        let keyless = counter!(names::THROTTLE_KEYLESS, names::NAME_LABEL => name.to_owned());
        let refused = |d: &'static str, level: Criticality| {
            counter!(
                names::THROTTLE_REFUSED_BY_CRITICALITY,
                names::NAME_LABEL => name.to_owned(),
                names::DECISION_LABEL => d,
                names::CRITICALITY_LABEL => level.as_str(),
            )
        };
        let shed_at = Criticality::ALL.map(|level| refused("shed", level));
        let quota_at = Criticality::ALL.map(|level| refused("quota", level));
        let mut all = [admitted, shed, quota, missing, keyless].into_iter();
        let mut all_at = shed_at.into_iter().chain(quota_at);
        let counters: [Counter; COUNTS] = std::array::from_fn(|_| {
            let c = all
                .next()
                .or_else(|| all_at.next())
                .expect("one counter per count");
            c.absolute(0);
            c
        });
        Arc::new(Series {
            counts: Sharded::default(),
            untimed: Sharded::default(),
            published: Mutex::new([0; COUNTS]),
            counters,
        })
    }

    #[inline]
    fn count(&self, what: usize) {
        self.counts.add(what, 1);
    }

    #[inline]
    fn count_refusal(&self, what: usize, by_level: usize, level: Criticality) {
        self.counts
            .add_all([(what, 1), (by_level + level.index(), 1)]);
    }

    /// Adds to each series what was counted since the last publication.
    fn publish(&self) {
        // Whoever holds the lock publishes; the rest move on (their counts are in the shards).
        let Some(mut published) = publish::try_lock_or_skip(&self.published) else {
            return;
        };
        publish::push_counts(&self.counters, &mut *published, self.counts.sums());
    }
}

/// What every service of one layer shares.
pub(super) struct Policy<K> {
    key: K,
    name: String,
    missing: MissingKey,
    shed: Option<ShedFraction>,
    quotas: Option<Store>,
    /// The quota store gives its clock's reading ([`QuotaStore::now`]): a request reads it
    /// once, for the quota and the shedding epoch.
    timed: bool,
    shed_retry_after: Duration,
    /// On the quotas' clock, when the shedding epoch cached in `epoch_prefix` ends.
    epoch_until: AtomicU64,
    /// [`stable_prefix`] of the shed's seed and the epoch that runs until `epoch_until`.
    epoch_prefix: AtomicU64,
    /// On the quotas' clock, when the counts are next published at a request.
    next_publish: AtomicU64,
    series: Arc<Series>,
}

/// A quota store: the in-process [`ClientQuotas`] called directly (its check is inlined into the
/// layer's), any other through its trait.
#[derive(Clone, Debug)]
enum Store {
    Local(ClientQuotas),
    Other(Arc<dyn QuotaStore>),
}

impl Store {
    fn new(store: impl QuotaStore) -> Store {
        let mut store = Some(store);
        match (&mut store as &mut dyn Any).downcast_mut::<Option<ClientQuotas>>() {
            Some(local) => Store::Local(local.take().expect("just set")),
            None => Store::Other(Arc::new(store.expect("not taken"))),
        }
    }

    fn as_dyn(&self) -> &dyn QuotaStore {
        match self {
            Store::Local(quotas) => quotas,
            Store::Other(store) => &**store,
        }
    }

    #[inline]
    fn now(&self) -> Option<u64> {
        match self {
            Store::Local(quotas) => Some(quotas.now()),
            Store::Other(store) => store.now(),
        }
    }

    #[inline]
    fn check_at(&self, key: &ClientId, now: u64) -> Result<(), Duration> {
        match self {
            Store::Local(quotas) => quotas.check_at(key, now),
            Store::Other(store) => store.check_at(key, now),
        }
    }

    fn check(&self, key: &ClientId) -> Result<(), Duration> {
        self.as_dyn().check(key)
    }
}

impl<K> Policy<K> {
    /// Admits the request, or says why not.
    #[inline]
    pub(super) fn decide<Req>(
        &self,
        req: &Req,
        level_of: impl Fn(&Req) -> Criticality,
    ) -> Result<(), BoxError>
    where
        K: ClientKey<Req>,
    {
        let level = || level_of(req);
        let series = &*self.series;
        // The key is used where the extractor left it: moving it out of the `Option` copies 40
        // bytes just written in narrower stores, which stalls the loads of the copy.
        let found = self.key.client_key(req);
        let anonymous;
        let key = match &found {
            Some(key) => key,
            None => {
                series.count(KEYLESS);
                match self.missing {
                    MissingKey::Shared => {
                        anonymous = ClientId::anonymous();
                        &anonymous
                    }
                    MissingKey::Refuse => {
                        series.count(MISSING);
                        self.published(None);
                        return Err(MissingClientKey.into());
                    }
                    MissingKey::Exempt => {
                        series.count(ADMITTED);
                        self.published(None);
                        return Ok(());
                    }
                }
            }
        };
        // The quota table's line is fetched while the clock is read.
        let prepared = match &self.quotas {
            Some(Store::Local(quotas)) => Some(quotas.prepare(key)),
            _ => None,
        };
        // The one clock reading of this request, on the quotas' clock, taken when first needed.
        let mut now = None;
        // Shedding first: a shed request must not spend its client's quota.
        if let Some(shed) = &self.shed {
            let shed_it = match shed.cut_at(level) {
                Cut::Nobody => false,
                Cut::Everybody => true,
                Cut::Below(threshold) => {
                    let prefix = match self.quota_now() {
                        Some(t) => {
                            now = Some(t);
                            self.epoch_prefix_at(shed, t)
                        }
                        None => stable_prefix(shed.seed(), shed.epoch_now().0),
                    };
                    stable_hash_from(prefix, key.as_bytes()) < threshold
                }
            };
            if shed_it {
                series.count_refusal(SHED, SHED_AT, level());
                self.published(now);
                return Err(Overloaded::new(OverloadReason::Throttled)
                    .with_retry_after(self.shed_retry_after)
                    .into());
            }
        }
        if let Some(quotas) = &self.quotas {
            let decision = if self.timed {
                let t = match now {
                    Some(t) => t,
                    None => self.quota_now().unwrap_or(0),
                };
                now = Some(t);
                match (quotas, prepared) {
                    (Store::Local(local), Some(fp)) => local.check_prepared(fp, t),
                    _ => quotas.check_at(key, t),
                }
            } else {
                quotas.check(key)
            };
            if let Err(wait) = decision {
                series.count_refusal(QUOTA, QUOTA_AT, level());
                self.published(now);
                return Err(Overloaded::new(OverloadReason::Throttled)
                    .with_retry_after(wait)
                    .into());
            }
        }
        series.count(ADMITTED);
        self.published(now);
        Ok(())
    }

    /// A reading of the quotas' clock, if they give one.
    #[inline]
    fn quota_now(&self) -> Option<u64> {
        if self.timed {
            self.quotas.as_ref().and_then(|q| q.now())
        } else {
            None
        }
    }

    /// The shedding epoch's hash prefix at `now` (the quotas' clock). The shed's own clock is
    /// read once an epoch, when it ends, to find where the next one ends: the two clocks need
    /// to agree on rates, not on origins.
    #[inline]
    fn epoch_prefix_at(&self, shed: &ShedFraction, now: u64) -> u64 {
        let until = self.epoch_until.load(Acquire);
        if now < until {
            return self.epoch_prefix.load(Relaxed);
        }
        let (epoch, left) = shed.epoch_now();
        let prefix = stable_prefix(shed.seed(), epoch);
        // Only the thread that takes the ended epoch (its end swapped for REFRESHING) stores the
        // next prefix and end, so a prefix is never paired with another epoch's end, which
        // would shed by a stale hash for a whole epoch. Meanwhile the others use the prefix they
        // worked out, or, reading REFRESHING, the one that just ended: nanoseconds at the
        // boundary, far below the fleet's alignment (about a second).
        if self
            .epoch_until
            .compare_exchange(until, REFRESHING, Acquire, Relaxed)
            .is_ok()
        {
            self.epoch_prefix.store(prefix, Relaxed);
            let end = now.saturating_add(left).min(REFRESHING - 1);
            self.epoch_until.store(end, Release);
        }
        prefix
    }

    /// Publishes the counts when it is time: at a request that read the clock, every 100 ms;
    /// else every [`PUBLISH_EVERY_UNTIMED`] requests of this thread.
    #[inline]
    fn published(&self, now: Option<u64>) {
        match now {
            Some(now) => {
                if now >= self.next_publish.load(Relaxed) {
                    self.next_publish
                        .store(now.saturating_add(PUBLISH_EVERY_NANOS), Relaxed);
                    self.series.publish();
                }
            }
            None => {
                // Counted per layer and thread, so every layer a thread serves publishes.
                if self
                    .series
                    .untimed
                    .add_get(0, 1)
                    .is_multiple_of(PUBLISH_EVERY_UNTIMED)
                {
                    self.series.publish();
                }
            }
        }
    }
}

impl<K> fmt::Debug for Policy<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("name", &self.name)
            .field("missing", &self.missing)
            .field("shed", &self.shed)
            .field("quotas", &self.quotas)
            .field("shed_retry_after", &self.shed_retry_after)
            .finish_non_exhaustive()
    }
}
