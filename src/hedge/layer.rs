use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tower_layer::Layer;

use super::late::LateShare;
use super::{
    AnyRequest, HedgeBucket, HedgeBudget, HedgeFn, HedgeService, LatencyTracker, MarkedIdempotent,
    STARTING_TOKENS,
};
use crate::classify::DefaultClassifier;
use crate::error::{ConfigError, check};
use crate::metrics::names;

/// The late share allowed above what the percentile predicts (see
/// [`HedgeLayerBuilder::max_late_share`]).
const LATE_MARGIN: f64 = 0.2;
/// The late-share bound with a fixed delay, where no percentile predicts the share.
const DEFAULT_LATE_SHARE: f64 = 0.25;

/// The most extra copies of one request ([`HedgeLayerBuilder::max_copies`]): gRPC's hedging
/// policy allows 5 attempts in all.
pub const MAX_COPIES: usize = 4;

/// When each further copy goes out.
#[derive(Debug, Clone, Copy)]
pub(super) enum DelayRule {
    /// The tracker's watched percentile, never below the floor, before each further copy; no
    /// hedge until the tracker answers.
    Tracker { floor: Duration },
    /// Fixed gaps from the first request on: copy `i` goes out `gaps[i - 1]` after copy
    /// `i - 1`, the last gap repeating past `len`.
    Fixed {
        gaps: [Duration; MAX_COPIES],
        len: usize,
    },
    /// Both copies at once (constant work).
    Now,
}

/// What every service and future of one layer shares.
pub(super) struct Shared<C, B, P> {
    pub(super) classifier: C,
    pub(super) budget: B,
    pub(super) hedgeable: P,
    pub(super) tracker: LatencyTracker,
    pub(super) rule: DelayRule,
    pub(super) series: Series,
    /// The share of recent requests still running at their delay, and its bound.
    pub(super) late: LateShare,
    pub(super) max_late_share: f64,
    /// Extra copies at most, 1 to [`MAX_COPIES`].
    pub(super) copies: usize,
}

impl<C, B, P> Shared<C, B, P> {
    /// The delay before the first duplicate, or `None` for no duplicate.
    pub(super) fn delay(&self) -> Option<Duration> {
        self.delay_before(1)
    }

    /// The wait before copy `copy` (1 for the first duplicate), counted from when copy
    /// `copy - 1` went out; `None` for no such copy.
    pub(super) fn delay_before(&self, copy: usize) -> Option<Duration> {
        if copy == 0 || copy > self.copies {
            return None;
        }
        match self.rule {
            // The same percentile each time: a copy still running at the age where 95% of
            // first copies had answered is as likely to be stuck as the first one was.
            DelayRule::Tracker { floor } => self.tracker.watched().map(|d| d.max(floor)),
            DelayRule::Fixed { gaps, len } => Some(gaps[copy.min(len) - 1]),
            DelayRule::Now => Some(Duration::ZERO),
        }
    }
}

pub(super) struct Series {
    pub(super) sent: Counter,
    pub(super) won: Counter,
    pub(super) denied: Counter,
    pub(super) stood_down: Counter,
    pub(super) delay: Gauge,
}

impl Series {
    fn register(name: &str) -> Self {
        names::describe_hedge();
        let label = [(names::NAME_LABEL, name.to_owned())];
        let series = Series {
            sent: counter!(names::HEDGES_SENT, &label),
            won: counter!(names::HEDGE_WINS, &label),
            denied: counter!(names::HEDGES_DENIED, &label),
            stood_down: counter!(names::HEDGES_STOOD_DOWN, &label),
            delay: gauge!(names::HEDGE_DELAY_SECONDS, &label),
        };
        series.sent.increment(0);
        series.won.increment(0);
        series.denied.increment(0);
        series.stood_down.increment(0);
        series.delay.set(0.0);
        series
    }
}

/// Sends a duplicate of a request that is late, and answers with the first success; see the
/// [module docs](super).
///
/// Every service this layer makes shares one [`LatencyTracker`] and one budget.
///
/// ```
/// use backstop::hedge::HedgeLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // A duplicate of a GET still unanswered after 10 ms (the default: the p95 of recent
/// // latencies), at most 5% extra requests.
/// let hedge = HedgeLayer::builder("inventory").fixed_delay(Duration::from_millis(10)).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(hedge)
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, backstop::BoxError>(http::Response::new(())) });
/// let res = svc.oneshot(http::Request::get("/stock").body(())?).await?;
/// assert_eq!(res.status(), 200);
/// # Ok(())
/// # }
/// ```
pub struct HedgeLayer<C = DefaultClassifier, B = HedgeBucket, P = MarkedIdempotent> {
    shared: Arc<Shared<C, B, P>>,
}

impl<C, B, P> Clone for HedgeLayer<C, B, P> {
    fn clone(&self) -> Self {
        HedgeLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C, B, P> std::fmt::Debug for HedgeLayer<C, B, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("rule", &self.shared.rule)
            .field("tracker", &self.shared.tracker)
            .finish()
    }
}

impl HedgeLayer {
    /// A layer with every default: hedge idempotent requests at the tracker's p95 (floor 1 ms,
    /// after 100 samples), at most 5% extra requests.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name).build().expect("defaults are valid")
    }

    /// Starts a builder whose series carry `name`, with the defaults: delay = p95 of the last 10–20 s of
    /// first-copy latencies but at least 1 ms, no hedge before 100 samples, a [`HedgeBucket`]
    /// earning 0.05 hedge per request (burst: what 10,000 requests earn, 500; 5 at the start; a
    /// token lost per overload answer), one copy at most
    /// ([`max_copies`](HedgeLayerBuilder::max_copies) 1), no duplicate while more than a
    /// quarter of recent requests are late at once, none at or after the request's deadline,
    /// hedge only requests that say they may run twice
    /// ([`HedgeRequest::is_idempotent`](super::HedgeRequest::is_idempotent): for HTTP a safe
    /// method or the [`Idempotent`](super::Idempotent) marker), outcomes read by
    /// [`DefaultClassifier`] (HTTP semantics for `http::Response`).
    pub fn builder(name: impl Into<String>) -> HedgeLayerBuilder {
        HedgeLayerBuilder {
            name: name.into(),
            classifier: DefaultClassifier,
            budget: None,
            hedgeable: MarkedIdempotent,
            tracker: None,
            percentile: 0.95,
            window: Duration::from_secs(10),
            min_samples: 100,
            floor: Duration::from_millis(1),
            fixed: None,
            constant_work: false,
            max_extra_load: 0.05,
            burst: None,
            starting_tokens: STARTING_TOKENS,
            max_late_share: None,
            max_copies: None,
            schedule: None,
        }
    }
}

impl<C, B, P> HedgeLayer<C, B, P> {
    /// The latency tracker the layer reads and feeds.
    pub fn tracker(&self) -> &LatencyTracker {
        &self.shared.tracker
    }

    /// The delay a request sent now would get before its duplicate: `None` while the tracker
    /// has too few samples. (Zero in constant-work mode.)
    pub fn current_delay(&self) -> Option<Duration> {
        self.shared.delay()
    }

    /// The most extra copies of one request ([`max_copies`](HedgeLayerBuilder::max_copies)).
    pub fn max_copies(&self) -> usize {
        self.shared.copies
    }

    /// The budget hedges draw on.
    pub fn budget(&self) -> &B {
        &self.shared.budget
    }

    /// The share of recent requests that were still running at their delay (an average over
    /// about the last 16), which must be at most
    /// [`max_late_share`](HedgeLayerBuilder::max_late_share) for a duplicate to go out.
    pub fn late_share(&self) -> f64 {
        self.shared.late.get()
    }

    /// Duplicates not sent because too many requests were late at once (the budget's own
    /// refusals are counted by the budget).
    pub fn stood_down(&self) -> u64 {
        self.shared.late.stood_down()
    }
}

impl<S, C, B, P> Layer<S> for HedgeLayer<C, B, P> {
    type Service = HedgeService<S, C, B, P>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService::new(inner, self.shared.clone())
    }
}

/// Builds a [`HedgeLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct HedgeLayerBuilder<C = DefaultClassifier, B = HedgeBucket, P = MarkedIdempotent> {
    name: String,
    classifier: C,
    budget: Option<B>,
    hedgeable: P,
    tracker: Option<LatencyTracker>,
    percentile: f64,
    window: Duration,
    min_samples: u64,
    floor: Duration,
    fixed: Option<Duration>,
    constant_work: bool,
    max_extra_load: f64,
    burst: Option<f64>,
    starting_tokens: f64,
    max_late_share: Option<f64>,
    max_copies: Option<usize>,
    schedule: Option<Vec<Duration>>,
}

impl<C, B, P> HedgeLayerBuilder<C, B, P> {
    /// The percentile of first-copy latencies after which a duplicate goes out, as a quantile
    /// in `0.5..=1.0`. Default 0.95. (Ignored with [`tracker`](Self::tracker): the shared
    /// tracker's own watched percentile is used.)
    pub fn percentile(mut self, quantile: f64) -> Self {
        self.percentile = quantile;
        self
    }

    /// The tracker's window: the delay follows the last one to two windows. Default 10 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Latencies needed before the first hedge. At least 1. Default 100.
    pub fn min_samples(mut self, min_samples: u64) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// The shortest delay the percentile may give, so a very fast service is not hedged on
    /// noise. Default 1 ms.
    pub fn min_delay(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// A fixed delay instead of the percentile (the duplicate goes out after `delay` from the
    /// first request on; each further copy, with [`max_copies`](Self::max_copies), `delay`
    /// after the one before). Must be more than zero.
    pub fn fixed_delay(mut self, delay: Duration) -> Self {
        self.fixed = Some(delay);
        self
    }

    /// Up to `copies` extra copies of a late request, 1 to [`MAX_COPIES`] (4; gRPC's hedging
    /// policy allows 5 attempts in all). Default 1. Copy `i` goes out one further delay after
    /// copy `i - 1` (the same percentile, or [`fixed_delay`](Self::fixed_delay), or the
    /// [`delay_schedule`](Self::delay_schedule)), while no copy has answered; the first success
    /// wins and the others are dropped. Every copy is paid by the same budget, so the cap on
    /// extra load holds whatever `copies` is; each one also asks the late share, and none goes
    /// out once a copy failed or the request's deadline is reached.
    ///
    /// More than one is for a request that waits for many calls at once (see
    /// [`copies_needed`](super::copies_needed) and [`fan_out`](super::fan_out)), or a backend
    /// whose slow answers come in groups a single duplicate can land in again.
    pub fn max_copies(mut self, copies: usize) -> Self {
        self.max_copies = Some(copies);
        self
    }

    /// Fixed gaps instead of the percentile: copy `i` goes out `gaps[i - 1]` after copy
    /// `i - 1`, the last gap repeating when [`max_copies`](Self::max_copies) asks for more
    /// copies than there are gaps. Without `max_copies`, one copy per gap. 1 to 4 gaps, each
    /// more than zero and at most 1 hour.
    pub fn delay_schedule(mut self, gaps: impl IntoIterator<Item = Duration>) -> Self {
        self.schedule = Some(gaps.into_iter().collect());
        self
    }

    /// Use (and feed) this shared tracker instead of a new one.
    pub fn tracker(mut self, tracker: LatencyTracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// Constant-work mode: every allowed request goes out twice at once (the duplicate marked
    /// [`HedgeCopy(1)`](super::HedgeCopy), the first copy unmarked), so the load does not change when one endpoint
    /// fails. No budget is asked: the extra load is a constant 100%.
    pub fn constant_work(mut self) -> Self {
        self.constant_work = true;
        self
    }

    /// The largest share of requests that may be hedged, earned per request by the default
    /// [`HedgeBucket`]: in `0.0..=1.0`. Default 0.05. (Ignored with [`budget`](Self::budget).)
    pub fn max_extra_load(mut self, fraction: f64) -> Self {
        self.max_extra_load = fraction;
        self
    }

    /// The most hedges the default bucket can save up: 1 to 10⁶. Default: what 10,000
    /// requests earn (`max_extra_load` × 10,000, at least 1; 500 at 5%). Over any stretch of
    /// requests, hedges ≤ `max_extra_load` × requests + `burst`.
    pub fn burst(mut self, burst: f64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The hedges the default bucket holds at the start: 0 to 10⁶ (no more than the burst).
    /// Default [`STARTING_TOKENS`] (5): a few for the first slow requests, not a stock for a
    /// burst to spend. (Ignored with [`budget`](Self::budget).)
    pub fn starting_tokens(mut self, tokens: f64) -> Self {
        self.starting_tokens = tokens;
        self
    }

    /// The largest share of recent requests still running at their delay (counting the one
    /// asking) for which a duplicate is still sent, in `0.0..=1.0`. Default: 20 points above
    /// the share the percentile predicts, 1 − `percentile` + 0.2 (0.25 at the p95), or 0.25
    /// with a [fixed delay](Self::fixed_delay). When most requests are late at once the
    /// downstream is slow for everyone and a duplicate only adds load. 1.0 turns the check off.
    /// (Not asked in constant-work mode.) Further copies ([`max_copies`](Self::max_copies))
    /// read the same share without counting their request again.
    ///
    /// With a fixed delay, set it from the share of requests the delay leaves late, plus the
    /// same 0.2: a 1 s delay on grpc-java's hedging example distribution leaves 10% late, and
    /// at 0.25 the average over ~16 requests crosses the bound by chance for about 5% of the
    /// late ones, which then get no copy (the `hedge_tail` example: p99.9 5,002 ms with two
    /// copies at 0.25, 2,002 ms at 0.3).
    pub fn max_late_share(mut self, share: f64) -> Self {
        self.max_late_share = Some(share);
        self
    }

    /// How outcomes count: a success ends the request, an overload is never hedged after.
    pub fn classifier<C2>(self, classifier: C2) -> HedgeLayerBuilder<C2, B, P> {
        HedgeLayerBuilder {
            name: self.name,
            classifier,
            budget: self.budget,
            hedgeable: self.hedgeable,
            tracker: self.tracker,
            percentile: self.percentile,
            window: self.window,
            min_samples: self.min_samples,
            floor: self.floor,
            fixed: self.fixed,
            constant_work: self.constant_work,
            max_extra_load: self.max_extra_load,
            burst: self.burst,
            starting_tokens: self.starting_tokens,
            max_late_share: self.max_late_share,
            max_copies: self.max_copies,
            schedule: self.schedule,
        }
    }

    /// Draw hedges from this budget instead of a new [`HedgeBucket`] (for example one shared
    /// by several layers, or [`Both`](super::Both) a local and a client-wide one).
    pub fn budget<B2: HedgeBudget>(self, budget: B2) -> HedgeLayerBuilder<C, B2, P> {
        HedgeLayerBuilder {
            name: self.name,
            classifier: self.classifier,
            budget: Some(budget),
            hedgeable: self.hedgeable,
            tracker: self.tracker,
            percentile: self.percentile,
            window: self.window,
            min_samples: self.min_samples,
            floor: self.floor,
            fixed: self.fixed,
            constant_work: self.constant_work,
            max_extra_load: self.max_extra_load,
            burst: self.burst,
            starting_tokens: self.starting_tokens,
            max_late_share: self.max_late_share,
            max_copies: self.max_copies,
            schedule: self.schedule,
        }
    }

    /// Which requests may be hedged, any type: `true` from the closure means safe to send twice.
    pub fn hedge_if<F>(self, f: F) -> HedgeLayerBuilder<C, B, HedgeFn<F>> {
        self.hedgeable(HedgeFn(f))
    }

    /// Every request may be hedged (all are idempotent).
    pub fn hedge_any(self) -> HedgeLayerBuilder<C, B, AnyRequest> {
        self.hedgeable(AnyRequest)
    }

    /// Which requests may be hedged, as a [`Hedgeable`](super::Hedgeable) policy.
    pub fn hedgeable<P2>(self, hedgeable: P2) -> HedgeLayerBuilder<C, B, P2> {
        HedgeLayerBuilder {
            name: self.name,
            classifier: self.classifier,
            budget: self.budget,
            hedgeable,
            tracker: self.tracker,
            percentile: self.percentile,
            window: self.window,
            min_samples: self.min_samples,
            floor: self.floor,
            fixed: self.fixed,
            constant_work: self.constant_work,
            max_extra_load: self.max_extra_load,
            burst: self.burst,
            starting_tokens: self.starting_tokens,
            max_late_share: self.max_late_share,
            max_copies: self.max_copies,
            schedule: self.schedule,
        }
    }
}

impl<C, P> HedgeLayerBuilder<C, HedgeBucket, P> {
    /// Checks the values and builds the layer.
    pub fn build(self) -> Result<HedgeLayer<C, HedgeBucket, P>, ConfigError> {
        let budget = match self.budget.clone() {
            Some(b) => b,
            None => {
                let burst = match self.burst {
                    Some(burst) => burst,
                    None if self.max_extra_load.is_finite() => {
                        super::budget::default_burst(self.max_extra_load)
                    }
                    None => 1.0,
                };
                HedgeBucket::with_start(self.max_extra_load, burst, self.starting_tokens)?
            }
        };
        self.budget(budget).build_with()
    }
}

impl<C, B: HedgeBudget, P> HedgeLayerBuilder<C, B, P> {
    /// Checks the values and builds the layer, with the budget given to
    /// [`budget`](Self::budget) (a builder whose budget is not a [`HedgeBucket`] builds with
    /// this; without a budget it refuses with a [`ConfigError`] on `budget`).
    pub fn build_with(self) -> Result<HedgeLayer<C, B, P>, ConfigError> {
        let percentile = check(
            "percentile",
            self.percentile,
            |q| (0.5..=1.0).contains(q),
            "a quantile in 0.5..=1.0",
        )?;
        let floor = check(
            "min_delay",
            self.floor,
            |f| *f <= Duration::from_secs(3600),
            "at most 1 hour",
        )?;
        let in_range = |d: &Duration| !d.is_zero() && *d <= Duration::from_secs(3600);
        let schedule = match &self.schedule {
            Some(gaps) => {
                check(
                    "delay_schedule",
                    gaps.len(),
                    |n| (1..=MAX_COPIES).contains(n),
                    "1 to 4 gaps",
                )?;
                for gap in gaps {
                    check(
                        "delay_schedule",
                        *gap,
                        in_range,
                        "gaps of more than zero and at most 1 hour",
                    )?;
                }
                Some(gaps.clone())
            }
            None => None,
        };
        let copies = check(
            "max_copies",
            self.max_copies
                .unwrap_or(schedule.as_ref().map_or(1, Vec::len)),
            |k| (1..=MAX_COPIES).contains(k),
            "1 to 4 extra copies",
        )?;
        let rule = if self.constant_work {
            // Constant work is one duplicate at once, the DynamoDB pattern; several would
            // multiply the load by a constant the caller did not ask for.
            check(
                "max_copies",
                copies,
                |k| *k == 1,
                "1 with constant_work (both copies at once)",
            )?;
            DelayRule::Now
        } else if let Some(gaps) = schedule {
            let mut fixed = [Duration::ZERO; MAX_COPIES];
            fixed[..gaps.len()].copy_from_slice(&gaps);
            DelayRule::Fixed {
                gaps: fixed,
                len: gaps.len(),
            }
        } else if let Some(fixed) = self.fixed {
            DelayRule::Fixed {
                gaps: [check(
                    "fixed_delay",
                    fixed,
                    in_range,
                    "more than zero and at most 1 hour (use constant_work for both at once)",
                )?; MAX_COPIES],
                len: 1,
            }
        } else {
            DelayRule::Tracker { floor }
        };
        let tracker = match self.tracker {
            Some(t) => t,
            None => LatencyTracker::builder()
                .window(self.window)
                .min_samples(self.min_samples)
                .watch(percentile)
                .build()?,
        };
        let max_late_share = match self.max_late_share {
            Some(share) => check(
                "max_late_share",
                share,
                |s| (0.0..=1.0).contains(s),
                "a share in 0.0..=1.0",
            )?,
            // The margin over the share a percentile delay leaves late when slowness is per
            // request: wide enough that an average over ~16 requests seldom crosses it by
            // chance (about three standard deviations at p85), narrow enough that a burst where
            // all are late crosses it within a handful of requests.
            None if self.fixed.is_some() || self.schedule.is_some() => DEFAULT_LATE_SHARE,
            None => ((1.0 - tracker.quantile()) + LATE_MARGIN).min(1.0),
        };
        let budget = self
            .budget
            .ok_or_else(|| ConfigError::new("budget", "none", "a budget"))?;
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                classifier: self.classifier,
                budget,
                hedgeable: self.hedgeable,
                tracker,
                rule,
                series: Series::register(&self.name),
                late: LateShare::new(),
                max_late_share,
                copies,
            }),
        })
    }
}
