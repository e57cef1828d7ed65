//! PID admission control on the simulation harness: a load step, and Netflix's profile.
//!
//! **Step scenario.** A server with 10 workers and a log-normal service time (mean 100 ms, cv
//! 0.5): capacity 100 requests/s. Users wait 1 s and do not retry. Load is 50 req/s (50%) for
//! 10 s, 300 req/s (300%) for 20 s, then 50 req/s for 10 s, Poisson arrivals, one seed for every
//! row. The target is 50 ms of queue delay. Rows:
//!
//! - **no control**: a FIFO queue (`BackpressureLayer`, 10 in flight, 100 000 waiting);
//! - **fixed limit**: `BackpressureLayer` with 10 in flight and 5 waiting, `QueueFull` beyond:
//!   Little's law sizes the line for the target (5 waiters / 100 per s = 50 ms);
//! - **gradient**: an adaptive concurrency limit in the style of Netflix's Gradient limit,
//!   written in this file for comparison (see `Gradient` below; not part of backstop), in
//!   front of the FIFO queue;
//! - **P, PI, PID**: `AdmissionLayer` with `QueueDelay::of_limiter` of the FIFO queue (the
//!   expected wait: waiting / grant rate), gains (2, 0, 0), (2, 20, 0), (2, 20, 0.2), even
//!   draws (`Draw::Even`); **PID random**: the same PID with independent random draws.
//!
//! Measured per row, the queue delay being the age of the oldest waiter sampled every 100 ms:
//! goodput over the surge (answers delivered before the user gave up, as a share of capacity);
//! settle time (from the step until the delay, averaged over any 1 s window slid in 100 ms
//! steps, stays within 2x the target to the end of the surge); the peak 100 ms sample; the 99th percentile of the samples from
//! 2 s after the step; the swing of the admission probability, averaged per second, from 5 s
//! after the step (max |p − mean|, in probability points and relative to the mean); the time
//! from the load's fall until every 100 ms window admits everything, to the end of the run.
//!
//! **Netflix scenario** (concurrency-limits' example profile). 2 workers, log-normal service time
//! mean 18 ms (cv 0.5): capacity 111 req/s ("about 100"; with exactly 100 the last phase would
//! be 100% load, where no queue is stable). Poisson load 50 → 90 → 200 → 100 req/s, 100 s each;
//! users wait 1 s. Measured: goodput in the 200/s phase (share of capacity), accepted p99
//! (queue + service, at the server) in that phase against the unloaded p99 (the 50/s phase's),
//! the time after the 200/s phase until the first whole second with no refusal, and until five
//! consecutive seconds each admit at least 99%. PID rows at 30 ms and 40 ms targets, and
//! **PID+line**: the 40 ms PID over a bounded line (2 in flight, 6 waiting, `QueueFull`
//! beyond): the PID holds the average, the bound cuts the bursts that random arrivals bring
//! (picked from a scan of lines 3, 4, 6, 8 × targets 30, 40 ms).
//!
//! The last line is `summary: pid_goodput=F pid_settle_s=S best_other_goodput=F
//! best_other_settle_s=S` for the step scenario; "best other" is the best of no control, fixed
//! limit, gradient, P and PI on each figure separately.
//!
//! Run it with `cargo run --release --example pid_step`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backstop::backpressure::{BackpressureLayer, Limiter};
use backstop::pid::{AdmissionController, AdmissionLayer, Draw, QueueDelay};
use backstop::sim::{
    ClientBehavior, Hop, LoadProfile, Scenario, ServiceTime, SimReport, SimRequest, SimResponse,
    SimService,
};
use backstop::{BoxError, OverloadReason, Overloaded, is_overload};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Control {
    None,
    Fixed,
    Gradient,
    P,
    Pi,
    Pid,
    PidRandom,
    PidBounded,
}

impl Control {
    fn name(self) -> &'static str {
        match self {
            Control::None => "no control",
            Control::Fixed => "fixed limit",
            Control::Gradient => "gradient",
            Control::P => "P",
            Control::Pi => "PI",
            Control::Pid => "PID",
            Control::PidRandom => "PID random",
            Control::PidBounded => "PID+line",
        }
    }

    fn is_pid(self) -> bool {
        matches!(
            self,
            Control::P | Control::Pi | Control::Pid | Control::PidRandom | Control::PidBounded
        )
    }
}

/// One server set-up: workers, service time, the queue-delay setpoint and the gains per row.
#[derive(Clone, Copy)]
struct Setup {
    workers: usize,
    mean: Duration,
    setpoint: f64,
    fixed_waiting: usize,
    /// The line under the PID in the `PidBounded` row.
    pid_bound: usize,
    p: (f64, f64, f64),
    pi: (f64, f64, f64),
    pid: (f64, f64, f64),
}

const STEP: Setup = Setup {
    workers: 10,
    mean: Duration::from_millis(100),
    setpoint: 0.050,
    fixed_waiting: 5,
    pid_bound: 10,
    p: (2.0, 0.0, 0.0),
    pi: (2.0, 20.0, 0.0),
    pid: (2.0, 20.0, 0.2),
};

const NETFLIX: Setup = Setup {
    workers: 2,
    mean: Duration::from_millis(18),
    setpoint: 0.030,
    fixed_waiting: 2,
    pid_bound: 6,
    p: (2.0, 0.0, 0.0),
    pi: (2.0, 20.0, 0.0),
    pid: (2.0, 20.0, 0.2),
};

impl Setup {
    fn capacity(&self) -> f64 {
        self.workers as f64 / self.mean.as_secs_f64()
    }
    fn gains(&self, c: Control) -> (f64, f64, f64) {
        match c {
            Control::P => self.p,
            Control::Pi => self.pi,
            _ => self.pid,
        }
    }
}

/// Counts what reaches the server stack and what it refuses, and records accepted latencies.
#[derive(Clone)]
struct Tally {
    start: Instant,
    offered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    accepted: Arc<Mutex<Vec<(Duration, Duration)>>>,
}

/// One 100 ms sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: Duration,
    delay: f64,
    probability: Option<f64>,
    offered: u64,
    refused: u64,
}

struct Run {
    control: Control,
    report: SimReport,
    samples: Vec<Sample>,
    accepted: Vec<(Duration, Duration)>,
}

fn run(
    name: &str,
    setup: Setup,
    control: Control,
    setpoint: f64,
    profile: LoadProfile,
    surge: (Duration, Duration),
) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let start = Instant::now();
        let max_waiting = match control {
            Control::Fixed => setup.fixed_waiting,
            Control::PidBounded => setup.pid_bound,
            _ => 100_000,
        };
        let queue = BackpressureLayer::builder()
            .name(format!("{name} {}", control.name()))
            .max_in_flight(setup.workers)
            .max_waiting(max_waiting)
            .build()
            .expect("valid queue");
        let limiter: Limiter = queue.limiter().clone();
        let controller = control.is_pid().then(|| {
            let (kp, ki, kd) = setup.gains(control);
            AdmissionController::builder(QueueDelay::of_limiter(&limiter))
                .name(format!("{name} {}", control.name()))
                .setpoint(setpoint)
                .gains(kp, ki, kd)
                .tick(TICK)
                .seed(42)
                .draw(if control == Control::PidRandom {
                    Draw::Random
                } else {
                    Draw::Even
                })
                .build()
                .expect("valid controller")
        });
        let tally = Tally {
            start,
            offered: Arc::default(),
            refused: Arc::default(),
            accepted: Arc::default(),
        };
        let gradient = Gradient::new(setup.workers);

        let (c2, t2, g2) = (controller.clone(), tally.clone(), gradient.clone());
        let hop = Hop::new(
            "server",
            setup.workers,
            ServiceTime::LogNormal {
                mean: setup.mean,
                cv: 0.5,
            },
        )
        .stack(move |server| {
            let queued = SimService::new(queue.layer(server));
            let controlled = match (&c2, control) {
                (Some(c), _) => SimService::new(AdmissionLayer::new(c.clone()).layer(queued)),
                (None, Control::Gradient) => g2.wrap(queued),
                _ => queued,
            };
            counting(t2.clone(), controlled)
        });
        let scenario = Scenario::builder(format!("{name} {}", control.name()))
            .seed(2026)
            .profile(profile)
            .clients(ClientBehavior {
                patience: Duration::from_secs(1),
                ..Default::default()
            })
            .surge(surge.0, surge.1)
            .hop(hop)
            .build()
            .expect("valid scenario");

        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s2, c3, t3) = (samples.clone(), controller.clone(), tally.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                let now = interval.tick().await;
                let sample = Sample {
                    t: now - start,
                    delay: limiter.oldest_wait().map_or(0.0, |d| d.as_secs_f64()),
                    probability: c3.as_ref().map(|c| c.admission_probability()),
                    offered: t3.offered.load(Relaxed),
                    refused: t3.refused.load(Relaxed),
                };
                s2.lock().unwrap().push(sample);
            }
        });
        let report = scenario.run_async().await;
        let samples = samples.lock().unwrap().clone();
        let accepted = tally.accepted.lock().unwrap().clone();
        Run {
            control,
            report,
            samples,
            accepted,
        }
    })
}

fn counting(tally: Tally, inner: SimService) -> SimService {
    SimService::new(tower::service_fn(move |req: SimRequest| {
        let tally = tally.clone();
        let inner = inner.clone();
        async move {
            let sent = Instant::now();
            tally.offered.fetch_add(1, Relaxed);
            let result = inner.oneshot(req).await;
            match &result {
                Err(e) if is_overload(e.as_ref()) => {
                    tally.refused.fetch_add(1, Relaxed);
                }
                Ok(_) => {
                    let at = sent - tally.start;
                    tally.accepted.lock().unwrap().push((at, sent.elapsed()));
                }
                _ => {}
            }
            result
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// An adaptive concurrency limit in the style of Netflix concurrency-limits' Gradient limit, for
// comparison only (not part of backstop). RTTs are averaged over windows of 10 responses; the
// no-load RTT is the smallest window average seen (the service time here does not drift; a
// sliding minimum over 100 windows learned a sustained queue as normal after ~10 s); gradient =
// clamp(1.5 × no-load / window RTT, 0.5, 1); limit ← 0.8 × limit + 0.2 × (limit × gradient +
// √limit), within [1, 200]; no growth while fewer than half the limit are in flight
// (app-limited). Over the limit: `QueueFull` at once. (A first try with Gradient's long-RTT
// exponential average drifted up with a sustained queue and never shed: the long average
// learns the queue as normal.)
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Gradient {
    state: Arc<Mutex<GradientState>>,
    in_flight: Arc<AtomicUsize>,
}

struct GradientState {
    limit: f64,
    no_load: f64,
    window_sum: f64,
    window_n: u32,
}

impl Gradient {
    fn new(initial: usize) -> Self {
        Gradient {
            state: Arc::new(Mutex::new(GradientState {
                limit: initial as f64,
                no_load: f64::INFINITY,
                window_sum: 0.0,
                window_n: 0,
            })),
            in_flight: Arc::default(),
        }
    }

    fn limit(&self) -> usize {
        self.state.lock().unwrap().limit as usize
    }

    fn on_sample(&self, rtt: f64, in_flight: usize) {
        let mut s = self.state.lock().unwrap();
        s.window_sum += rtt;
        s.window_n += 1;
        if s.window_n < 10 {
            return;
        }
        let short = s.window_sum / s.window_n as f64;
        s.window_sum = 0.0;
        s.window_n = 0;
        s.no_load = s.no_load.min(short);
        let no_load = s.no_load;
        let gradient = (1.5 * no_load / short).clamp(0.5, 1.0);
        if gradient >= 1.0 && (in_flight as f64) < s.limit / 2.0 {
            return;
        }
        let target = s.limit * gradient + s.limit.sqrt();
        s.limit = (s.limit * 0.8 + target * 0.2).clamp(1.0, 200.0);
    }

    fn wrap(&self, inner: SimService) -> SimService {
        let g = self.clone();
        SimService::new(GradientService { g, inner })
    }
}

#[derive(Clone)]
struct GradientService {
    g: Gradient,
    inner: SimService,
}

impl Service<SimRequest> for GradientService {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SimResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let g = self.g.clone();
        let in_flight = g.in_flight.fetch_add(1, Relaxed) + 1;
        if in_flight > g.limit().max(1) {
            g.in_flight.fetch_sub(1, Relaxed);
            return Box::pin(async { Err(Overloaded::new(OverloadReason::QueueFull).into()) });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            // Give the slot back even if the caller drops this future.
            struct Slot(Arc<AtomicUsize>);
            impl Drop for Slot {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Relaxed);
                }
            }
            let _slot = Slot(g.in_flight.clone());
            let sent = Instant::now();
            let result = inner.oneshot(req).await;
            if result.is_ok() {
                g.on_sample(sent.elapsed().as_secs_f64(), in_flight);
            }
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.
// ---------------------------------------------------------------------------------------------

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Goodput between `from` and `to` (1 s buckets) as a share of capacity.
fn goodput(r: &Run, from: Duration, to: Duration, capacity: f64) -> f64 {
    let good: u64 = r
        .report
        .series
        .iter()
        .filter(|b| b.start >= from && b.start < to)
        .map(|b| b.goodput)
        .sum();
    good as f64 / secs(to - from) / capacity
}

/// Per second from `from` to `to`: the mean of `f` over the second's 100 ms samples.
fn per_second(
    r: &Run,
    from: Duration,
    to: Duration,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Vec<f64> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let xs: Vec<f64> = r
            .samples
            .iter()
            .filter(|s| s.t >= t && s.t < t + Duration::from_secs(1))
            .filter_map(&f)
            .collect();
        if !xs.is_empty() {
            out.push(xs.iter().sum::<f64>() / xs.len() as f64);
        }
        t += Duration::from_secs(1);
    }
    out
}

/// Seconds from `from` until the queue delay, averaged over any 1 s window (slid in 100 ms
/// steps), stays within `bound` until `to`; `None` if the last window is still above.
fn settle(r: &Run, from: Duration, to: Duration, bound: f64) -> Option<f64> {
    let delays: Vec<f64> = r
        .samples
        .iter()
        .filter(|s| s.t >= from && s.t < to)
        .map(|s| s.delay)
        .collect();
    let means: Vec<f64> = delays
        .windows(10)
        .map(|w| w.iter().sum::<f64>() / 10.0)
        .collect();
    match means.iter().rposition(|d| *d > bound) {
        None => Some(0.0),
        Some(i) if i + 1 < means.len() => Some((i + 1) as f64 * secs(TICK)),
        Some(_) => None,
    }
}

/// The 99th percentile of the 100 ms queue-delay samples between `from` and `to`.
fn delay_p99(r: &Run, from: Duration, to: Duration) -> f64 {
    let mut d: Vec<f64> = r
        .samples
        .iter()
        .filter(|s| s.t >= from && s.t < to)
        .map(|s| s.delay)
        .collect();
    d.sort_by(f64::total_cmp);
    d.get(d.len() * 99 / 100).copied().unwrap_or(0.0)
}

/// (max |p − mean|, mean) of the admission probability, averaged per second, between `from`
/// and `to`.
fn swing(r: &Run, from: Duration, to: Duration) -> Option<(f64, f64)> {
    let ps = per_second(r, from, to, |s| s.probability);
    if ps.is_empty() {
        return None;
    }
    let mean = ps.iter().sum::<f64>() / ps.len() as f64;
    let worst = ps.iter().map(|p| (p - mean).abs()).fold(0.0, f64::max);
    Some((worst, mean))
}

/// Admitted share of what reached the server stack, per window of `every` samples, from
/// `from` on: (window start, share).
fn admitted_share(r: &Run, from: Duration, every: usize) -> Vec<(Duration, f64)> {
    let window: Vec<&Sample> = r.samples.iter().filter(|s| s.t >= from).collect();
    window
        .windows(every + 1)
        .step_by(every)
        .map(|w| {
            let (a, b) = (w[0], w[every]);
            let offered = b.offered - a.offered;
            let refused = b.refused - a.refused;
            let share = if offered == 0 {
                1.0
            } else {
                1.0 - refused as f64 / offered as f64
            };
            (a.t, share)
        })
        .collect()
}

/// Seconds after `from` until the admitted share per 100 ms is 100% and stays so to the end.
fn full_admission_stays(r: &Run, from: Duration) -> Option<f64> {
    let shares = admitted_share(r, from, 1);
    let last_bad = shares.iter().rposition(|(_, s)| *s < 1.0);
    match last_bad {
        None => Some(0.0),
        Some(i) if i + 1 < shares.len() => Some(secs(shares[i + 1].0 - from)),
        Some(_) => None,
    }
}

/// Seconds after `from` until the admitted share is ≥ 99% in each of `n` consecutive seconds.
fn full_admission_for(r: &Run, from: Duration, n: usize) -> Option<f64> {
    let shares = admitted_share(r, from, 10);
    shares
        .windows(n)
        .find(|w| w.iter().all(|(_, s)| *s >= 0.99))
        .map(|w| secs(w[0].0 - from))
}

fn p99(r: &Run, from: Duration, to: Duration) -> Option<Duration> {
    let mut lat: Vec<Duration> = r
        .accepted
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, l)| *l)
        .collect();
    if lat.is_empty() {
        return None;
    }
    lat.sort();
    Some(lat[(lat.len() * 99 / 100).min(lat.len() - 1)])
}

fn fmt_opt(x: Option<f64>, unit: &str) -> String {
    x.map_or("never".to_owned(), |v| format!("{v:.1}{unit}"))
}

const ROWS: [Control; 7] = [
    Control::None,
    Control::Fixed,
    Control::Gradient,
    Control::P,
    Control::Pi,
    Control::Pid,
    Control::PidRandom,
];

struct StepFigures {
    control: Control,
    goodput: f64,
    settle: Option<f64>,
}

fn step_scenario() -> Vec<StepFigures> {
    let s = Duration::from_secs;
    let (warm, surge, cool) = (s(10), s(20), s(10));
    let cap = STEP.capacity();
    let profile = LoadProfile::new()
        .step(warm, 0.5 * cap)
        .step(surge, 3.0 * cap)
        .step(cool, 0.5 * cap);
    let (from, to) = (warm, warm + surge);
    let bound = 2.0 * STEP.setpoint;

    println!(
        "step: capacity {cap:.0} req/s, 50% -> 300% at {}s -> 50% at {}s; target queue delay {:.0} ms",
        secs(from),
        secs(to),
        1e3 * STEP.setpoint
    );
    println!(
        "{:<12} {:>8} {:>8} {:>10} {:>14} {:>17} {:>16} {:>8}",
        "row",
        "goodput",
        "settle",
        "peak",
        "delay p99 >2s",
        "p swing >5s",
        "full adm. after",
        "refused"
    );
    let mut figures = Vec::new();
    for control in ROWS {
        let r = run(
            "step",
            STEP,
            control,
            STEP.setpoint,
            profile.clone(),
            (from, to),
        );
        let g = goodput(&r, from, to, cap);
        let st = settle(&r, from, to, bound);
        let md = delay_p99(&r, from + s(2), to);
        let peak = r
            .samples
            .iter()
            .filter(|x| x.t >= from && x.t < to)
            .map(|x| x.delay)
            .fold(0.0, f64::max);
        let sw = swing(&r, from + s(5), to).map_or("-".to_owned(), |(w, m)| {
            format!("±{w:.3} ({:.0}%)", 100.0 * w / m)
        });
        let back = full_admission_stays(&r, to);

        let last = r.samples.last().expect("sampled");
        println!(
            "{:<12} {:>7.1}% {:>8} {:>7.0} ms {:>11.0} ms {:>17} {:>16} {:>7.1}%",
            control.name(),
            100.0 * g,
            fmt_opt(st, " s"),
            1e3 * peak,
            1e3 * md,
            sw,
            fmt_opt(back, " s"),
            100.0 * last.refused as f64 / last.offered.max(1) as f64,
        );
        figures.push(StepFigures {
            control: r.control,
            goodput: g,
            settle: st,
        });
    }
    figures
}

/// Seconds after `from` until the first whole second in which nothing was refused.
fn first_full_second(r: &Run, from: Duration) -> Option<f64> {
    admitted_share(r, from, 10)
        .iter()
        .find(|(_, share)| *share >= 1.0)
        .map(|(t, _)| secs(*t - from))
}

fn netflix_scenario() {
    let s = Duration::from_secs;
    let phase = s(100);
    let cap = NETFLIX.capacity();
    let profile = LoadProfile::new()
        .step(phase, 50.0)
        .step(phase, 90.0)
        .step(phase, 200.0)
        .step(phase, 100.0);
    let (from, to) = (2 * phase, 3 * phase);
    println!();
    println!(
        "netflix: 2 workers, log-normal 18 ms (cv 0.5): capacity {cap:.0} req/s; Poisson 50 -> 90 -> 200 -> 100 req/s, 100 s each"
    );
    println!(
        "{:<18} {:>12} {:>8} {:>9} {:>7} {:>12} {:>14}",
        "row", "goodput@200", "p99@50", "p99@200", "ratio", "first full", "full 5 s"
    );
    let rows = [
        (Control::None, 0.0),
        (Control::Fixed, 0.0),
        (Control::Gradient, 0.0),
        (Control::Pid, NETFLIX.setpoint),
        (Control::Pid, 0.040),
        (Control::PidRandom, NETFLIX.setpoint),
        (Control::PidBounded, 0.040),
    ];
    for (control, setpoint) in rows {
        let r = run(
            "netflix",
            NETFLIX,
            control,
            setpoint,
            profile.clone(),
            (from, to),
        );
        let g = goodput(&r, from, to, cap);
        let unloaded = p99(&r, Duration::ZERO, phase);
        let loaded = p99(&r, from, to);
        let ratio = match (unloaded, loaded) {
            (Some(u), Some(l)) => format!("{:.2}x", secs(l) / secs(u)),
            _ => "-".to_owned(),
        };
        let ms =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.0} ms", 1e3 * secs(d)));
        let name = if control.is_pid() {
            format!("{} {:.0} ms", control.name(), 1e3 * setpoint)
        } else {
            control.name().to_owned()
        };
        println!(
            "{:<18} {:>11.1}% {:>8} {:>9} {:>7} {:>12} {:>14}",
            name,
            100.0 * g,
            ms(unloaded),
            ms(loaded),
            ratio,
            fmt_opt(first_full_second(&r, to), " s"),
            fmt_opt(full_admission_for(&r, to, 5), " s"),
        );
    }
}

fn main() {
    let step = step_scenario();
    netflix_scenario();

    let pid = step
        .iter()
        .find(|f| f.control == Control::Pid)
        .expect("ran");
    let others = step
        .iter()
        .filter(|f| !matches!(f.control, Control::Pid | Control::PidRandom));
    let best_goodput = others.clone().map(|f| f.goodput).fold(0.0, f64::max);
    let best_settle = others
        .filter_map(|f| f.settle)
        .fold(f64::INFINITY, f64::min);
    println!(
        "summary: pid_goodput={:.3} pid_settle_s={:.1} best_other_goodput={:.3} best_other_settle_s={:.1}",
        pid.goodput,
        pid.settle.unwrap_or(f64::NAN),
        best_goodput,
        best_settle,
    );
}
