//! Hostile configuration: every public builder's numeric and duration fields, given extreme
//! values one at a time, must either build something that then serves 100 requests (on paused
//! time) or answer a `ConfigError` that names the field. Nothing may panic, hang, or build a layer
//! that quietly cannot do its job (a bucket that never grants, a controller whose idle signal
//! sheds, a NaN output).
//!
//! The same table feeds `tests/config_extremes.rs` (which fails listing every bad case, and draws
//! random combinations from the same value sets) and the `config_panics` figure of
//! `examples/hostile_clients.rs` ([`measure`]).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::hedge::{HedgeBucket, HedgeLayer, LatencyTracker};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::pid::{AdmissionController, AdmissionLayer, PidController, signal_fn};
use backstop::retry::{RetryBudget, RetryLayer};
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
use backstop::{BoxError, ConfigError, OverloadReason, Overloaded, find_overload};
use tower::{Layer, Service, ServiceExt};

/// The floating-point values every `f64` field is tried with.
pub const F64S: &[f64] = &[
    0.0,
    -1.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE,
    1e-300,
    0.5,
    1.0,
    2.0,
    100.0,
    1e300,
    f64::MAX,
];

/// The durations every `Duration` field is tried with.
pub const DURATIONS: &[Duration] = &[
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(3600),
    Duration::MAX,
];

/// The integers every integer field is tried with (cast to the field's type, saturating).
pub const INTEGERS: &[u64] = &[0, 1, 2, 100, u32::MAX as u64, u64::MAX];

/// How long (virtual time) one request may take before it counts as hung.
const HANG: Duration = Duration::from_secs(3600);
/// Requests served per built case.
pub const REQUESTS: u64 = 100;

#[derive(Clone, Copy, Debug)]
pub enum Value {
    F64(f64),
    Duration(Duration),
    Int(u64),
}

impl Value {
    fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            (Value::Duration(a), Value::Duration(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            _ => false,
        }
    }

    fn show(&self) -> String {
        match self {
            Value::F64(v) => format!("{v:e}"),
            Value::Duration(d) if *d == Duration::MAX => "Duration::MAX".to_owned(),
            Value::Duration(d) => format!("{d:?}"),
            Value::Int(v) => match *v {
                u64::MAX => "u64::MAX".to_owned(),
                v if v == u32::MAX as u64 => "u32::MAX".to_owned(),
                v => v.to_string(),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F64,
    Duration,
    /// An unsigned integer field; values above the type's maximum saturate to it.
    U32,
    U64,
    Usize,
}

impl Kind {
    /// The values this kind is tried with.
    pub fn values(self) -> Vec<Value> {
        match self {
            Kind::F64 => F64S.iter().map(|&v| Value::F64(v)).collect(),
            Kind::Duration => DURATIONS.iter().map(|&d| Value::Duration(d)).collect(),
            Kind::U32 | Kind::U64 | Kind::Usize => {
                INTEGERS.iter().map(|&v| Value::Int(v)).collect()
            }
        }
    }
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

/// The values a case sets: one per field, `None` keeping the builder's default.
pub struct Settings<'a> {
    fields: &'a [Field],
    values: &'a [Option<Value>],
}

impl Settings<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        let i = self.fields.iter().position(|f| f.name == name);
        i.and_then(|i| self.values[i])
    }

    fn f64(&self, name: &str) -> Option<f64> {
        match self.get(name) {
            Some(Value::F64(v)) => Some(v),
            _ => None,
        }
    }

    fn dur(&self, name: &str) -> Option<Duration> {
        match self.get(name) {
            Some(Value::Duration(d)) => Some(d),
            _ => None,
        }
    }

    fn u64(&self, name: &str) -> Option<u64> {
        match self.get(name) {
            Some(Value::Int(v)) => Some(v),
            _ => None,
        }
    }

    fn u32(&self, name: &str) -> Option<u32> {
        self.u64(name).map(|v| v.min(u32::MAX as u64) as u32)
    }

    fn usize(&self, name: &str) -> Option<usize> {
        self.u64(name).map(|v| v.min(usize::MAX as u64) as usize)
    }
}

/// Applies `v` to `b` with `set` when the case sets it.
fn with<B, T>(b: B, v: Option<T>, set: impl FnOnce(B, T) -> B) -> B {
    match v {
        Some(v) => set(b, v),
        None => b,
    }
}

/// What a case did once built: the requests' outcomes, and what was wrong, if anything.
#[derive(Debug, Default, Clone)]
pub struct Served {
    pub ok: u64,
    pub failed: u64,
    pub hung: u64,
    /// Refusals by the layer under test, by reason (the inner service's own refusals carry
    /// `BudgetExhausted`, a reason no layer here uses for a request, and count in `failed`).
    pub refused: Vec<(OverloadReason, u64)>,
    /// The first request's refusal, if it was refused.
    pub first_refused: Option<OverloadReason>,
    /// A misbehaviour the case's own check found.
    pub wrong: Option<String>,
}

impl Served {
    fn refused(&self, reason: OverloadReason) -> u64 {
        self.refused
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// How a case ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Built and served every request, each with one outcome.
    Served(Served),
    /// Refused at build with an error naming one of the builder's fields.
    Refused(ConfigError),
    /// The value cannot be expressed through the public API (e.g. a `NonZeroU32` of 0).
    Unrepresentable,
    /// Refused with an error that names no field of this builder.
    BadError(ConfigError),
    /// Built, but a request hung or a check failed.
    Misbehaved(String),
    /// Panicked, with the message and place.
    Panicked(String),
}

impl Verdict {
    pub fn is_panic(&self) -> bool {
        matches!(self, Verdict::Panicked(_))
    }

    pub fn is_bad(&self) -> bool {
        matches!(
            self,
            Verdict::Panicked(_) | Verdict::BadError(_) | Verdict::Misbehaved(_)
        )
    }
}

enum Built {
    Served(Served),
    Unrepresentable,
}

/// One public builder (or a pair that is only usable together), its fields, and how to build
/// and drive it.
pub struct Builder {
    pub name: &'static str,
    /// The folder under `src/` that owns it.
    pub folder: &'static str,
    pub fields: &'static [Field],
    /// Field names an error may carry besides the fields' own (a check of a derived value).
    pub also: &'static [&'static str],
    run: fn(&Settings<'_>) -> Result<Built, ConfigError>,
}

/// A case: one builder and the values it sets.
#[derive(Clone)]
pub struct Case {
    pub builder: &'static Builder,
    pub values: Vec<Option<Value>>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl Case {
    pub fn label(&self) -> String {
        let set: Vec<String> = self
            .builder
            .fields
            .iter()
            .zip(&self.values)
            .filter_map(|(f, v)| v.map(|v| format!("{}={}", f.name, v.show())))
            .collect();
        format!("{}{{{}}}", self.builder.name, set.join(", "))
    }

    /// True when a value of this case is on the [`KNOWN_OPEN`] list.
    pub fn known_open(&self) -> Option<&'static KnownOpen> {
        KNOWN_OPEN.iter().find(|k| {
            k.builder == self.builder.name
                && self
                    .builder
                    .fields
                    .iter()
                    .zip(&self.values)
                    .any(|(f, v)| f.name == k.field && v.is_some_and(|v| (k.value)(v)))
        })
    }

    /// Runs the case on a fresh paused runtime, catching any panic (also one in a task the
    /// layer spawned) so it is counted, not fatal.
    pub fn run(&self) -> Verdict {
        quiet_panics();
        PANICS.with(|p| p.borrow_mut().clear());
        IN_CASE.with(|c| c.set(true));
        let settings = Settings {
            fields: self.builder.fields,
            values: &self.values,
        };
        let result = catch_unwind(AssertUnwindSafe(|| (self.builder.run)(&settings)));
        IN_CASE.with(|c| c.set(false));
        let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if !panics.is_empty() {
            return Verdict::Panicked(panics.join("; "));
        }
        match result {
            Err(_) => Verdict::Panicked("(no message)".to_owned()),
            Ok(Ok(Built::Unrepresentable)) => Verdict::Unrepresentable,
            Ok(Ok(Built::Served(s))) => {
                if s.hung > 0 {
                    Verdict::Misbehaved(format!("{} of {REQUESTS} requests hung", s.hung))
                } else if let Some(wrong) = &s.wrong {
                    Verdict::Misbehaved(wrong.clone())
                } else {
                    Verdict::Served(s)
                }
            }
            Ok(Err(e)) => {
                let named = self.builder.fields.iter().any(|f| f.name == e.field())
                    || self.builder.also.contains(&e.field());
                if named && e.to_string().contains(&format!("`{}`", e.field())) {
                    Verdict::Refused(e)
                } else {
                    Verdict::BadError(e)
                }
            }
        }
    }
}

/// A panic or misbehaviour found in a folder another engineer owns, kept out of the test's
/// "must not fail" set until it is fixed there. Empty this list as the fixes land.
pub struct KnownOpen {
    pub builder: &'static str,
    pub field: &'static str,
    pub value: fn(Value) -> bool,
    pub why: &'static str,
}

pub static KNOWN_OPEN: &[KnownOpen] = &[];

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records panics raised while a case runs on this thread instead of printing them (a panic in
/// a spawned task would otherwise only be printed); other panics go to the previous hook.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(|c| c.get()) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANICS.with(|p| p.borrow_mut().push(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

#[derive(Clone, Copy, Debug)]
struct Id(u64);

type Inner = tower::util::BoxCloneService<http::Request<()>, http::Response<()>, BoxError>;

/// The inner service: a few milliseconds of work; some requests fail, some are refused.
fn inner() -> Inner {
    Inner::new(tower::service_fn(|req: http::Request<()>| async move {
        let id = req.extensions().get::<Id>().map_or(0, |i| i.0);
        tokio::time::sleep(Duration::from_millis(1 + (id % 4) * 5)).await;
        match id % 7 {
            3 => Err::<_, BoxError>("connection reset".into()),
            5 => Err(Overloaded::new(OverloadReason::BudgetExhausted).into()),
            _ => Ok(http::Response::new(())),
        }
    }))
}

fn request(id: u64) -> http::Request<()> {
    let mut req = http::Request::get("/")
        .header("x-client-id", format!("client-{}", id % 5))
        .body(())
        .expect("a valid request");
    req.extensions_mut().insert(Id(id));
    if id.is_multiple_of(3) {
        req.set_deadline(Deadline::after(Duration::from_millis(20 + id)));
    }
    req
}

/// Sends [`REQUESTS`] requests in four waves of concurrent calls and tallies the outcomes.
async fn serve<S>(svc: S) -> Served
where
    S: Service<http::Request<()>> + Clone,
    S::Error: Into<BoxError>,
{
    let mut served = Served::default();
    let wave = REQUESTS / 4;
    for w in 0..4 {
        let calls = (w * wave..(w + 1) * wave).map(|id| {
            let svc = svc.clone();
            async move {
                (
                    id,
                    tokio::time::timeout(HANG, svc.oneshot(request(id))).await,
                )
            }
        });
        for (id, outcome) in futures::future::join_all(calls).await {
            match outcome {
                Err(_) => served.hung += 1,
                Ok(Ok(_)) => served.ok += 1,
                Ok(Err(e)) => {
                    let e: BoxError = e.into();
                    match find_overload(e.as_ref()).map(|o| o.reason()) {
                        Some(r) if r != OverloadReason::BudgetExhausted => {
                            match served.refused.iter_mut().find(|(x, _)| *x == r) {
                                Some((_, n)) => *n += 1,
                                None => served.refused.push((r, 1)),
                            }
                            if id == 0 {
                                served.first_refused = Some(r);
                            }
                        }
                        _ => served.failed += 1,
                    }
                }
            }
        }
        // Long enough for controllers and windows (100 ms ticks by default) to move between
        // waves.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    served
}

/// Builds `layer` (on the runtime, as a server would) and serves the requests through it.
fn serve_layer<L>(rt: &tokio::runtime::Runtime, layer: L) -> Served
where
    L: Layer<Inner>,
    L::Service: Service<http::Request<()>> + Clone,
    <L::Service as Service<http::Request<()>>>::Error: Into<BoxError>,
{
    rt.block_on(serve(layer.layer(inner())))
}

fn served(s: Served) -> Result<Built, ConfigError> {
    Ok(Built::Served(s))
}

// ----- the builders -----

fn timeout(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let b = TimeoutLayer::builder();
    let b = with(b, s.dur("timeout"), |b, v| b.timeout(v));
    let b = with(b, s.f64("fraction"), |b, v| b.fraction(v));
    let layer = b.build()?;
    served(serve_layer(&rt, layer))
}

fn retry_budget(s: &Settings<'_>) -> Result<RetryBudget, ConfigError> {
    let b = RetryBudget::builder("hostile");
    let b = with(b, s.f64("ratio"), |b, v| b.ratio(v));
    let b = with(b, s.f64("min_per_second"), |b, v| b.min_per_second(v));
    let b = with(b, s.f64("max_tokens"), |b, v| b.max_tokens(v));
    let b = with(b, s.f64("timeout_cost"), |b, v| b.timeout_cost(v));
    let b = with(b, s.f64("initial_tokens"), |b, v| b.initial_tokens(v));
    b.build()
}

fn retry(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let budget = retry_budget(s)?;
    let b = RetryLayer::builder(budget);
    let b = with(b, s.u32("max_retries"), |b, v| b.max_retries(v));
    let backoff = (s.dur("backoff.base"), s.dur("backoff.cap"));
    let b = match backoff {
        (None, None) => b,
        (base, cap) => b.backoff(
            base.unwrap_or(Duration::from_millis(50)),
            cap.unwrap_or(Duration::from_secs(1)),
        ),
    };
    let b = with(b, s.dur("min_time_left"), |b, v| b.min_time_left(v));
    let b = with(b, s.u64("seed"), |b, v| b.seed(v));
    let layer = b.build()?;
    served(serve_layer(&rt, layer))
}

fn hedge(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let b = HedgeLayer::builder("hedge");
    let b = with(b, s.f64("percentile"), |b, v| b.percentile(v));
    let b = with(b, s.dur("window"), |b, v| b.window(v));
    let b = with(b, s.u64("min_samples"), |b, v| b.min_samples(v));
    let b = with(b, s.dur("min_delay"), |b, v| b.min_delay(v));
    let b = with(b, s.dur("fixed_delay"), |b, v| b.fixed_delay(v));
    let b = with(b, s.f64("max_extra_load"), |b, v| b.max_extra_load(v));
    let b = with(b, s.f64("burst"), |b, v| b.burst(v));
    let b = with(b, s.usize("max_copies"), |b, v| b.max_copies(v));
    let layer = b.build()?;
    served(serve_layer(&rt, layer))
}

fn hedge_parts(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let bucket = HedgeBucket::with_burst(
        s.f64("max_extra_load").unwrap_or(0.1),
        s.f64("burst").unwrap_or(10.0),
    )?;
    let t = LatencyTracker::builder();
    let t = with(t, s.dur("window"), |b, v| b.window(v));
    let t = with(t, s.u64("min_samples"), |b, v| b.min_samples(v));
    let t = with(t, s.f64("quantile"), |b, v| b.watch(v));
    let tracker = t.build()?;
    let layer = HedgeLayer::builder("hedge")
        .tracker(tracker)
        .budget(bucket)
        .build_with()?;
    served(serve_layer(&rt, layer))
}

fn token_bucket(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let b = TokenBucket::builder("hostile");
    let b = with(b, s.f64("capacity"), |b, v| b.capacity(v));
    let b = with(b, s.f64("rate"), |b, v| b.rate(v));
    let b = with(b, s.f64("initial_tokens"), |b, v| b.initial_tokens(v));
    let bucket = b.build()?;
    let b = TokenBucketLayer::builder(bucket);
    let b = with(b, s.dur("max_wait"), |b, v| b.wait_up_to(v));
    let layer = b.build()?;
    let mut served = serve_layer(&rt, layer);
    // A full bucket (the default start) must grant the first request.
    if s.f64("initial_tokens").is_none() && served.first_refused.is_some() {
        served.wrong = Some("a full bucket refused the first request".to_owned());
    }
    Ok(Built::Served(served))
}

fn adaptive(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let b = AdaptiveRate::aws();
    let b = with(b, s.f64("beta"), |b, v| b.beta(v));
    let b = with(b, s.f64("scale"), |b, v| b.scale(v));
    let b = with(b, s.f64("smoothing"), |b, v| b.smoothing(v));
    let b = with(b, s.f64("measure_window"), |b, v| b.measure_window(v));
    let b = with(b, s.f64("min_rate"), |b, v| b.min_rate(v));
    let b = with(b, s.f64("max_rate"), |b, v| b.max_rate(v));
    let b = with(b, s.f64("initial_rate"), |b, v| b.initial_rate(v));
    let rate = b.build()?;
    let bucket = TokenBucket::builder("hostile").adaptive(rate).build()?;
    let layer = TokenBucketLayer::builder(bucket)
        .wait_up_to(Duration::from_millis(100))
        .build()?;
    served(serve_layer(&rt, layer))
}

fn throttle(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let per_second = match NonZeroU32::new(s.u32("per_second").unwrap_or(100)) {
        Some(n) => n,
        None => return Ok(Built::Unrepresentable),
    };
    // Some clients shed by default, so refusals (and their retry-after) are made.
    let b = ShedFraction::builder("hostile").seed(7).initial(0.4);
    let b = with(b, s.f64("initial"), |b, v| b.initial(v));
    let b = with(b, s.dur("rotate_every"), |b, v| b.rotate_every(v));
    let shed = b.build()?;
    let b = ClientQuotas::builder("hostile", Quota::per_second(per_second));
    let b = with(b, s.usize("max_keys"), |b, v| b.max_keys(v));
    let b = with(b, s.dur("sweep_every"), |b, v| b.sweep_every(v));
    let quotas = b.build()?;
    let b = ThrottleLayer::builder("throttle", HeaderKey::default())
        .shed(shed)
        .quotas(quotas);
    let b = with(b, s.dur("shed_retry_after"), |b, v| b.shed_retry_after(v));
    let layer = b.build()?;
    // As a server runs it: refusals become 429/503 answers with a Retry-After header.
    let stack = tower::ServiceBuilder::new()
        .map_result(backstop::http::overload_to_response::<()>)
        .layer(layer);
    served(serve_layer(&rt, stack))
}

fn pid_admission(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    // An idle signal: nothing is queued, so nothing should be shed.
    let b = AdmissionController::builder("admission", signal_fn(|_| Some(0.0))).seed(11);
    let b = with(b, s.dur("tick"), |b, v| b.tick(v));
    let b = with(b, s.f64("setpoint"), |b, v| b.setpoint(v));
    let b = match (s.f64("kp"), s.f64("ki"), s.f64("kd")) {
        (None, None, None) => b,
        (kp, ki, kd) => b.gains(kp.unwrap_or(2.0), ki.unwrap_or(20.0), kd.unwrap_or(0.2)),
    };
    let b = with(b, s.f64("min_admission"), |b, v| b.min_admission(v));
    let b = with(b, s.dur("derivative_filter"), |b, v| b.derivative_filter(v));
    let b = with(b, s.dur("measurement_filter"), |b, v| {
        b.measurement_filter(v)
    });
    let b = with(b, s.f64("adaptive_filter"), |b, v| b.adaptive_filter(v));
    let b = with(b, s.f64("dead_band"), |b, v| b.dead_band(v));
    let b = with(b, s.f64("error_limit"), |b, v| b.error_limit(v));
    let b = with(b, s.f64("floor"), |b, v| b.floor(v));
    let b = with(b, s.dur("floor_tracking"), |b, v| b.floor_tracking(v));
    let controller = b.build()?;
    let mut served = serve_layer(&rt, AdmissionLayer::new(controller));
    let denied = served.refused(OverloadReason::AdmissionDenied);
    if denied > REQUESTS / 2 {
        served.wrong = Some(format!(
            "an idle signal (0) denied {denied} of {REQUESTS} requests"
        ));
    }
    Ok(Built::Served(served))
}

fn pid_controller(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let b = PidController::builder();
    let b = with(b, s.f64("setpoint"), |b, v| b.setpoint(v));
    let b = match (s.f64("kp"), s.f64("ki"), s.f64("kd")) {
        (None, None, None) => b,
        (kp, ki, kd) => b.gains(kp.unwrap_or(1.0), ki.unwrap_or(0.5), kd.unwrap_or(0.1)),
    };
    let b = match (s.f64("min"), s.f64("max")) {
        (None, None) => b,
        (min, max) => b.output_range(min.unwrap_or(0.0), max.unwrap_or(1.0)),
    };
    let b = with(b, s.f64("bias"), |b, v| b.bias(v));
    let b = with(b, s.dur("derivative_filter"), |b, v| b.derivative_filter(v));
    let b = with(b, s.dur("measurement_filter"), |b, v| {
        b.measurement_filter(v)
    });
    let b = with(b, s.f64("adaptive_filter"), |b, v| b.adaptive_filter(v));
    let b = match (s.f64("dead_band.below"), s.f64("dead_band.above")) {
        (None, None) => b,
        (below, above) => b.dead_band(below.unwrap_or(0.0), above.unwrap_or(0.0)),
    };
    let b = with(b, s.f64("error_limit"), |b, v| b.error_limit(v));
    let mut pid = b.build()?;
    let (lo, hi) = pid.output_range();
    let mut served = Served::default();
    for i in 0..REQUESTS {
        let measurement = [0.0, 0.5, 1.0, 2.0, -1.0][(i % 5) as usize] * (i as f64);
        let out = pid.update(measurement, Duration::from_millis(10));
        if out.is_nan() || out < lo || out > hi {
            served.wrong = Some(format!(
                "output {out} outside [{lo}, {hi}] after measurement {measurement}"
            ));
        }
        served.ok += 1;
    }
    Ok(Built::Served(served))
}

fn backpressure(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    // A small default limit, so that waves of 25 wait and the queue's code runs.
    let b = BackpressureLayer::builder("backpressure").max_in_flight(4);
    let b = with(b, s.usize("max_in_flight"), |b, v| b.max_in_flight(v));
    let b = with(b, s.usize("max_waiting"), |b, v| b.max_waiting(v));
    let layer = b.build()?;
    served(serve_layer(&rt, layer))
}

fn lifo_queue(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    // A small default limit, so that waves of 25 wait and the shedding code runs.
    let b = LifoQueueLayer::builder("lifo_queue").max_in_flight(4);
    let b = with(b, s.usize("max_in_flight"), |b, v| b.max_in_flight(v));
    let b = with(b, s.usize("max_waiting"), |b, v| b.max_waiting(v));
    let b = with(b, s.dur("target"), |b, v| b.target(v));
    let b = with(b, s.dur("interval"), |b, v| b.interval(v));
    let b = with(b, s.dur("sideline"), |b, v| b.sideline(v));
    let layer = b.build()?;
    served(serve_layer(&rt, layer))
}

fn little(s: &Settings<'_>) -> Result<Built, ConfigError> {
    let rt = runtime();
    let _guard = rt.enter();
    let b = LittleMeter::builder("hostile");
    let b = with(b, s.f64("capacity"), |b, v| b.capacity(v));
    let b = with(b, s.dur("window"), |b, v| b.window(v));
    let meter = b.build()?;
    let start = meter.snapshot();
    let mut served = serve_layer(&rt, LittleLayer::new(meter.clone()));
    let (whole, window) = rt.block_on(async { (meter.snapshot().since(&start), meter.report()) });
    let finite = |r: &backstop::metrics::LittleReport| {
        [
            r.average_concurrency,
            r.completed_concurrency,
            r.arrival_rate,
        ]
        .iter()
        .chain(&r.utilization)
        .all(|x| x.is_finite())
    };
    if !finite(&whole) || !finite(&window) || whole.arrivals != REQUESTS {
        served.wrong = Some(format!(
            "figures not finite or arrivals missed: {whole:?} / {window:?}"
        ));
    }
    Ok(Built::Served(served))
}

use Kind::{Duration as D, F64, U32, U64, Usize};

/// Every public builder with numeric or duration fields.
pub static BUILDERS: &[Builder] = &[
    Builder {
        name: "TimeoutLayer",
        folder: "timeout",
        fields: &[f("timeout", D), f("fraction", F64)],
        also: &[],
        run: timeout,
    },
    Builder {
        name: "RetryLayer+RetryBudget",
        folder: "retry",
        fields: &[
            f("ratio", F64),
            f("min_per_second", F64),
            f("max_tokens", F64),
            f("timeout_cost", F64),
            f("initial_tokens", F64),
            f("max_retries", U32),
            f("backoff.base", D),
            f("backoff.cap", D),
            f("min_time_left", D),
            f("seed", U64),
        ],
        also: &["backoff"],
        run: retry,
    },
    Builder {
        name: "HedgeLayer",
        folder: "hedge",
        fields: &[
            f("percentile", F64),
            f("window", D),
            f("min_samples", U64),
            f("min_delay", D),
            f("fixed_delay", D),
            f("max_extra_load", F64),
            f("burst", F64),
            f("max_copies", Usize),
        ],
        also: &[],
        run: hedge,
    },
    Builder {
        name: "HedgeBucket+LatencyTracker",
        folder: "hedge",
        fields: &[
            f("max_extra_load", F64),
            f("burst", F64),
            f("window", D),
            f("min_samples", U64),
            f("quantile", F64),
        ],
        also: &[],
        run: hedge_parts,
    },
    Builder {
        name: "TokenBucket+TokenBucketLayer",
        folder: "token_bucket",
        fields: &[
            f("capacity", F64),
            f("rate", F64),
            f("initial_tokens", F64),
            f("max_wait", D),
        ],
        also: &[],
        run: token_bucket,
    },
    Builder {
        name: "AdaptiveRate",
        folder: "token_bucket",
        fields: &[
            f("beta", F64),
            f("scale", F64),
            f("smoothing", F64),
            f("measure_window", F64),
            f("min_rate", F64),
            f("max_rate", F64),
            f("initial_rate", F64),
        ],
        also: &[],
        run: adaptive,
    },
    Builder {
        name: "ThrottleLayer+ShedFraction+ClientQuotas",
        folder: "throttle",
        fields: &[
            f("initial", F64),
            f("rotate_every", D),
            f("per_second", U32),
            f("max_keys", Usize),
            f("sweep_every", D),
            f("shed_retry_after", D),
        ],
        also: &[],
        run: throttle,
    },
    Builder {
        name: "AdmissionLayer+AdmissionController",
        folder: "pid",
        fields: &[
            f("tick", D),
            f("setpoint", F64),
            f("kp", F64),
            f("ki", F64),
            f("kd", F64),
            f("min_admission", F64),
            f("derivative_filter", D),
            f("measurement_filter", D),
            f("adaptive_filter", F64),
            f("dead_band", F64),
            f("error_limit", F64),
            f("floor", F64),
            f("floor_tracking", D),
        ],
        also: &["dead_band.above", "max"],
        run: pid_admission,
    },
    Builder {
        name: "PidController",
        folder: "pid",
        fields: &[
            f("setpoint", F64),
            f("kp", F64),
            f("ki", F64),
            f("kd", F64),
            f("min", F64),
            f("max", F64),
            f("bias", F64),
            f("derivative_filter", D),
            f("measurement_filter", D),
            f("adaptive_filter", F64),
            f("dead_band.below", F64),
            f("dead_band.above", F64),
            f("error_limit", F64),
        ],
        also: &[],
        run: pid_controller,
    },
    Builder {
        name: "BackpressureLayer",
        folder: "backpressure",
        fields: &[f("max_in_flight", Usize), f("max_waiting", Usize)],
        also: &[],
        run: backpressure,
    },
    Builder {
        name: "LifoQueueLayer",
        folder: "lifo_queue",
        fields: &[
            f("max_in_flight", Usize),
            f("max_waiting", Usize),
            f("target", D),
            f("interval", D),
            f("sideline", D),
        ],
        also: &[],
        run: lifo_queue,
    },
    Builder {
        name: "LittleLayer+LittleMeter",
        folder: "metrics",
        fields: &[f("capacity", F64), f("window", D)],
        also: &[],
        run: little,
    },
];

/// The case table: for every builder, every field set to every value of its kind, one at a
/// time, the other fields at their defaults.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for builder in BUILDERS {
        for (i, field) in builder.fields.iter().enumerate() {
            for value in field.kind.values() {
                let mut values = vec![None; builder.fields.len()];
                values[i] = Some(value);
                cases.push(Case { builder, values });
            }
        }
    }
    cases
}

/// Runs every case of the table; returns each with its verdict.
pub fn run_all() -> Vec<(Case, Verdict)> {
    cases()
        .into_iter()
        .map(|case| {
            let verdict = case.run();
            (case, verdict)
        })
        .collect()
}

/// config_panics: how many cases of the table panicked (at build or while serving), counting
/// the known-open ones too.
pub fn measure() -> u64 {
    run_all().iter().filter(|(_, v)| v.is_panic()).count() as u64
}

/// A few lines on what the figure counts, and which cases failed.
pub fn describe() -> String {
    let results = run_all();
    let count = |p: fn(&Verdict) -> bool| results.iter().filter(|(_, v)| p(v)).count();
    let mut out = format!(
        "config: {} extreme builder cases over {} builders: {} built and served {REQUESTS} \
         requests each, {} refused with a ConfigError naming the field, {} panicked, {} misbehaved \
         (hung, a check failed, or an error naming no field)",
        results.len(),
        BUILDERS.len(),
        count(|v| matches!(v, Verdict::Served(_))),
        count(|v| matches!(v, Verdict::Refused(_))),
        count(|v| v.is_panic()),
        count(|v| matches!(v, Verdict::Misbehaved(_) | Verdict::BadError(_))),
    );
    for (case, verdict) in results.iter().filter(|(_, v)| v.is_bad()) {
        let open = case.known_open().map_or("", |_| " [known open]");
        out.push_str(&format!("\n  {}{open}: {verdict:?}", case.label()));
    }
    out
}
