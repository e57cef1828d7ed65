use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tower_layer::Layer;

use super::marker::{AnyRequest, IdempotentFn, MarkedIdempotent};
use super::{Budget, Retry};
use crate::classify::DefaultClassifier;
use crate::error::{ConfigError, check};

/// Which retryable failures the layer passes up marked "decided below" ([`AlreadyRetried`] on
/// an error, the [`RETRIED_HEADER`] on an HTTP response), so that layers above, in this process
/// or in the callers of this service, do not retry them again.
///
/// [`AlreadyRetried`]: super::AlreadyRetried
/// [`RETRIED_HEADER`]: super::RETRIED_HEADER
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MarkRetried {
    /// Mark nothing.
    Never,
    /// Mark a retryable failure only when this layer retried it. A failure whose retry this
    /// layer declined (budget empty, too little time left, not idempotent, no retries
    /// configured) goes up unmarked, and a layer above may retry it: in a chain of four
    /// retrying services, one request can then reach the bottom 3 times or more.
    AfterRetry,
    /// Mark every retryable failure this layer saw, retried or not (the default): the retry was
    /// decided here, once, by the layer closest to the failure, and every layer above passes
    /// the failure up, so a request reaches the bottom of a chain at most twice at any depth.
    /// The name is kept from when this was an opt-in for internal services.
    #[default]
    Always,
}

impl MarkRetried {
    /// The default, under the name that says what it means: every retryable failure goes up
    /// marked "decided below", retried or not.
    pub const DECIDED: MarkRetried = MarkRetried::Always;
}

/// Retries a failed request at most once, when a shared [`Budget`] allows; see the
/// [module docs](super).
///
/// Build it with [`RetryLayer::builder`].
///
/// ```
/// use backstop::retry::{RetryBudget, RetryLayer};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let budget = RetryBudget::builder("inventory").initial_tokens(1.0).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder(budget).build()?)
///     .service_fn({
///         let calls = calls.clone();
///         move |_req: http::Request<()>| {
///             // The first attempt answers 500, the retry 200.
///             let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 500 } else { 200 };
///             async move { Ok::<_, backstop::BoxError>(http::Response::builder().status(status).body(())?) }
///         }
///     });
/// let res = svc.oneshot(http::Request::get("/stock").body(())?).await?;
/// assert_eq!((res.status().as_u16(), calls.load(Ordering::SeqCst)), (200, 2));
/// # Ok(())
/// # }
/// ```
pub struct RetryLayer<B, C = DefaultClassifier, I = MarkedIdempotent> {
    pub(super) shared: Arc<Shared<B, C>>,
    pub(super) idempotency: I,
}

impl<B, C, I: Clone> Clone for RetryLayer<B, C, I> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}

impl<B: fmt::Debug, C: fmt::Debug, I: fmt::Debug> fmt::Debug for RetryLayer<B, C, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("shared", &self.shared)
            .field("idempotency", &self.idempotency)
            .finish()
    }
}

impl<B: Budget> RetryLayer<B> {
    /// A layer drawing on `budget`, with the defaults (see [`RetryLayer::builder`]).
    pub fn new(budget: B) -> Self {
        Self::builder(budget)
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a builder drawing on `budget`, with the defaults: one retry, a full-jitter delay
    /// from [0, 100 ms] (base 50 ms, cap 1 s), no retry with less than 10 ms left before the
    /// deadline, [`DefaultClassifier`] (HTTP semantics for `http::Response`), only requests that say they are idempotent
    /// ([`RetryRequest::is_idempotent`](super::RetryRequest::is_idempotent): for HTTP an idempotent
    /// method or the [`Idempotent`](super::Idempotent) marker), markers honoured and set on
    /// every retryable failure passed up, retried or declined ([`MarkRetried::Always`]), and
    /// the thread-local random generator.
    pub fn builder(budget: B) -> RetryLayerBuilder<B> {
        RetryLayerBuilder {
            budget,
            classifier: DefaultClassifier,
            idempotency: MarkedIdempotent,
            max_retries: 1,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(1),
            min_time_left: Duration::from_millis(10),
            honour_marker: true,
            mark: MarkRetried::Always,
            seed: None,
        }
    }
}

impl<B, C> RetryLayer<B, C> {
    /// The budget the layer draws on.
    pub fn budget(&self) -> &B {
        &self.shared.budget
    }
}

impl<S, B, C, I: Clone> Layer<S> for RetryLayer<B, C, I> {
    type Service = Retry<S, B, C, I>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.shared.clone(), self.idempotency.clone())
    }
}

/// The configuration every clone of a layer, its services and their futures share.
pub(super) struct Shared<B, C> {
    pub(super) budget: B,
    pub(super) classifier: C,
    pub(super) max_retries: u32,
    pub(super) base: Duration,
    pub(super) cap: Duration,
    pub(super) min_time_left: Duration,
    pub(super) honour_marker: bool,
    pub(super) mark: MarkRetried,
    /// Locked only on the retry path, to draw one delay.
    seeded: Option<Mutex<StdRng>>,
}

impl<B, C> Shared<B, C> {
    /// A full-jitter delay no longer than `limit`: uniform in [0, min(cap, 2 × base, limit)].
    pub(super) fn delay(&self, limit: Duration) -> Duration {
        let upper = self.cap.min(self.base.saturating_mul(2)).min(limit);
        if upper.is_zero() {
            return Duration::ZERO;
        }
        let nanos = upper.as_nanos().min(u64::MAX as u128) as u64;
        let drawn = match &self.seeded {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                rng.random_range(0..=nanos)
            }
            None => rand::rng().random_range(0..=nanos),
        };
        Duration::from_nanos(drawn)
    }
}

impl<B: fmt::Debug, C: fmt::Debug> fmt::Debug for Shared<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryConfig")
            .field("budget", &self.budget)
            .field("classifier", &self.classifier)
            .field("max_retries", &self.max_retries)
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("min_time_left", &self.min_time_left)
            .field("honour_marker", &self.honour_marker)
            .field("mark", &self.mark)
            .field("seeded", &self.seeded.is_some())
            .finish()
    }
}

/// Builds a [`RetryLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct RetryLayerBuilder<B, C = DefaultClassifier, I = MarkedIdempotent> {
    budget: B,
    classifier: C,
    idempotency: I,
    max_retries: u32,
    base: Duration,
    cap: Duration,
    min_time_left: Duration,
    honour_marker: bool,
    mark: MarkRetried,
    seed: Option<u64>,
}

impl<B, C, I> RetryLayerBuilder<B, C, I> {
    /// Retries per request: 0 or 1. Default 1. More is refused: retries at every layer of a
    /// call chain multiply (3 retries at each of 3 layers send 64× the load to the bottom).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The full-jitter delay before the retry: drawn uniformly from [0, min(cap, 2 × base)]
    /// (AWS's `min(cap, base × 2^attempt)` for the first retry), and never longer than the
    /// request's deadline allows. Needs `base <= cap`. Default 50 ms and 1 s.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// No retry when less than this is left before the request's deadline; the delay also ends
    /// at least this long before it. Default 10 ms.
    pub fn min_time_left(mut self, min: Duration) -> Self {
        self.min_time_left = min;
        self
    }

    /// Whether a failure marked "decided below" is passed up without a retry. Default
    /// true.
    pub fn honour_retried_marker(mut self, honour: bool) -> Self {
        self.honour_marker = honour;
        self
    }

    /// Which failures passed up get the "decided below" marker. Default
    /// [`MarkRetried::Always`]: every retryable failure, retried or declined.
    pub fn mark_retried(mut self, mark: MarkRetried) -> Self {
        self.mark = mark;
        self
    }

    /// Draws delays from a generator seeded with `seed`, for reproducible runs. Default: the
    /// thread-local generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Reads outcomes through `classifier`: only [`Outcome::Retryable`] is retried. Use
    /// [`HttpClassifier`](crate::classify::HttpClassifier) for `http` services.
    ///
    /// [`Outcome::Retryable`]: crate::classify::Outcome::Retryable
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<B, C2, I> {
        RetryLayerBuilder {
            budget: self.budget,
            classifier,
            idempotency: self.idempotency,
            max_retries: self.max_retries,
            base: self.base,
            cap: self.cap,
            min_time_left: self.min_time_left,
            honour_marker: self.honour_marker,
            mark: self.mark,
            seed: self.seed,
        }
    }

    /// Retries only the requests for which `is_idempotent` returns true, instead of asking
    /// [`RetryRequest::is_idempotent`](super::RetryRequest::is_idempotent). For HTTP,
    /// [`http_method_is_idempotent`](super::http_method_is_idempotent) is that default rule
    /// (method or marker), to combine with your own.
    pub fn idempotent_if<F>(self, is_idempotent: F) -> RetryLayerBuilder<B, C, IdempotentFn<F>> {
        self.with_idempotency(IdempotentFn(is_idempotent))
    }

    /// Retries every request, marked idempotent or not: the opt-in for services whose requests
    /// are all safe to repeat.
    pub fn retry_non_idempotent(self) -> RetryLayerBuilder<B, C, AnyRequest> {
        self.with_idempotency(AnyRequest)
    }

    fn with_idempotency<I2>(self, idempotency: I2) -> RetryLayerBuilder<B, C, I2> {
        RetryLayerBuilder {
            budget: self.budget,
            classifier: self.classifier,
            idempotency,
            max_retries: self.max_retries,
            base: self.base,
            cap: self.cap,
            min_time_left: self.min_time_left,
            honour_marker: self.honour_marker,
            mark: self.mark,
            seed: self.seed,
        }
    }

    /// Checks the values and builds the layer.
    pub fn build(self) -> Result<RetryLayer<B, C, I>, ConfigError> {
        let max_retries = check(
            "max_retries",
            self.max_retries,
            |n| *n <= 1,
            "0 or 1: retries at each layer of a call chain multiply (3 retries at each of 3 \
             layers send 64x the load to the bottom service); retry once at most and let the \
             budget bound the aggregate",
        )?;
        let (base, cap) = check(
            "backoff",
            (self.base, self.cap),
            |(base, cap)| base <= cap,
            "a base no greater than the cap",
        )?;
        let shared = Shared {
            budget: self.budget,
            classifier: self.classifier,
            max_retries,
            base,
            cap,
            min_time_left: self.min_time_left,
            honour_marker: self.honour_marker,
            mark: self.mark,
            seeded: self.seed.map(|s| Mutex::new(StdRng::seed_from_u64(s))),
        };
        Ok(RetryLayer {
            shared: Arc::new(shared),
            idempotency: self.idempotency,
        })
    }
}
