use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, counter};
use tower_layer::Layer;

use super::error::MissingClientKey;
use super::key::{ClientId, ClientKey, MissingKey};
use super::service::Throttle;
use super::shed::ShedFraction;
use super::store::QuotaStore;
use crate::context::{ByCriticality, Criticality, SameCriticality};
use crate::error::{BoxError, ConfigError, OverloadReason, Overloaded, check};
use crate::metrics::names;

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
        self.policy.quotas.as_deref()
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
    quotas: Option<Arc<dyn QuotaStore>>,
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
        self.quotas = Some(Arc::new(quotas));
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
        names::describe_throttle();
        let decision = |d: &'static str| counter!(names::THROTTLE_REQUESTS, names::NAME_LABEL => self.name.clone(), names::DECISION_LABEL => d);
        let [admitted, shed, quota, missing_key] = names::THROTTLE_DECISIONS.map(|d| {
            let c = decision(d);
            c.absolute(0);
            c
        });
        let keyless = counter!(names::THROTTLE_KEYLESS, names::NAME_LABEL => self.name.clone());
        keyless.absolute(0);
        Ok(ThrottleLayer {
            policy: Arc::new(Policy {
                key: self.key,
                name: self.name,
                missing: self.missing,
                shed: self.shed,
                quotas: self.quotas,
                shed_retry_after,
                admitted,
                shed_count: shed,
                quota_count: quota,
                missing_count: missing_key,
                keyless,
            }),
            criticality: SameCriticality,
        })
    }
}

/// What every service of one layer shares.
pub(super) struct Policy<K> {
    key: K,
    name: String,
    missing: MissingKey,
    shed: Option<ShedFraction>,
    quotas: Option<Arc<dyn QuotaStore>>,
    shed_retry_after: Duration,
    admitted: Counter,
    shed_count: Counter,
    quota_count: Counter,
    missing_count: Counter,
    keyless: Counter,
}

impl<K> Policy<K> {
    /// Admits the request, or says why not.
    pub(super) fn decide<Req>(&self, req: &Req, level: Criticality) -> Result<(), BoxError>
    where
        K: ClientKey<Req>,
    {
        let key = match self.key.client_key(req) {
            Some(key) => key,
            None => {
                self.keyless.increment(1);
                match self.missing {
                    MissingKey::Shared => ClientId::anonymous(),
                    MissingKey::Refuse => {
                        self.missing_count.increment(1);
                        return Err(MissingClientKey.into());
                    }
                    MissingKey::Exempt => {
                        self.admitted.increment(1);
                        return Ok(());
                    }
                }
            }
        };
        // Shedding first: a shed request must not spend its client's quota.
        if let Some(shed) = &self.shed
            && shed.is_shed_at(&key, level)
        {
            self.shed_count.increment(1);
            return Err(Overloaded::new(OverloadReason::Throttled)
                .with_retry_after(self.shed_retry_after)
                .into());
        }
        if let Some(quotas) = &self.quotas
            && let Err(wait) = quotas.check(&key)
        {
            self.quota_count.increment(1);
            return Err(Overloaded::new(OverloadReason::Throttled)
                .with_retry_after(wait)
                .into());
        }
        self.admitted.increment(1);
        Ok(())
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
