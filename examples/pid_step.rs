//! PID admission control on the simulation harness: a load step, and Netflix's profile, each
//! run with three seeds.
//!
//! **The recommended configuration** (the row named **PID**, the same recipe in both
//! scenarios): an `AdmissionLayer` steering the queue delay (`QueueDelay::of_limiter`: waiting /
//! grant rate) to the setpoint `s`, with even draws (`Draw::Even`), a hysteresis of 0.3 `s`
//! above the setpoint (`dead_band`), a 1 s low-pass filter on the signal (`measurement_filter`)
//! made adaptive at `s` (`adaptive_filter`: a jump of `s` halves its time constant, so a load
//! step passes at once while the second-to-second noise stays averaged out), gains (2, 26, 0.4)
//! × 50 ms / `s`, and the default floor (a request that would wait less than `s` is always
//! admitted; the integral tracks what the floor let in, over 60 s),
//! in front of a short bounded line: a `BackpressureLayer` whose `max_waiting` is what the server
//! drains in 1.8 `s` (Little's law: `1.8 × s × capacity`), `QueueFull` beyond. The controller
//! holds the average queue delay; the line cuts the bursts that random arrivals bring, which a
//! controller sampling every 100 ms cannot see coming; the floor keeps the workers busy.
//!
//! **Step scenario.** A server with 10 workers and a log-normal service time (mean 100 ms, cv
//! 0.5): capacity 100 requests/s. Users wait 1 s and do not retry. Load is 50 req/s (50%) for
//! 10 s, 300 req/s (300%) for 20 s, then 50 req/s for 10 s, Poisson arrivals. The target is
//! 50 ms of queue delay, so the PID's line is 9 waiting. Rows:
//!
//! - **no control**: a FIFO queue (`BackpressureLayer`, 10 in flight, 100 000 waiting);
//! - **fixed limit**: `BackpressureLayer` with 10 in flight and 5 waiting, `QueueFull` beyond:
//!   Little's law sizes the line for the target (5 waiters / 100 per s = 50 ms);
//! - **gradient**: an adaptive concurrency limit in the style of Netflix's Gradient limit,
//!   written in this file for comparison (see `Gradient` below; not part of backstop), in
//!   front of the FIFO queue;
//! - **line alone**: the PID row's bounded line without the PID (what the PID adds);
//! - **P, PI, PID alone**: `AdmissionLayer` over the unbounded FIFO queue, gains (2, 0, 0),
//!   (2, 20, 0), (2, 20, 0.2), even draws, no dead band, no filter, the default floor;
//!   **PID random**: PID alone with independent random draws;
//! - **PID**: the recommended configuration above.
//!
//! Measured per row, the queue delay being the age of the oldest waiter sampled every 100 ms:
//! goodput over the surge (answers delivered before the user gave up, as a share of capacity);
//! "empty", the 100 ms samples of the surge (of 200) with nobody waiting, when a worker may idle;
//! settle time (from the step until the delay, averaged over any 1 s window slid in 100 ms
//! steps, stays within 2x the target to the end of the surge); the peak 100 ms sample; the 99th
//! percentile of the samples from 2 s after the step; the swing, from 5 s after the step, of
//! the admission probability averaged per second (max |p − mean|, relative to the mean) and of
//! the share of arriving requests the whole stack admitted per second (controller and line
//! together; for rows without a controller, the only figure); the time from the load's fall
//! until every 100 ms window admits everything, to the end of the run; the share of requests
//! refused, and the share of the refusals that the admission controller made ("by PID").
//!
//! **Netflix scenario** (concurrency-limits' example profile). 2 workers, log-normal service time
//! mean 18 ms (cv 0.5): capacity 111 req/s ("about 100"; with exactly 100 the last phase would
//! be 100% load, where no queue is stable). Poisson load 50 → 90 → 200 → 100 req/s, 100 s each;
//! users wait 1 s. Target 30 ms (line 7). Measured: goodput in the 200/s phase (share of
//! capacity), accepted p99 (queue + service, at the server) in that phase against the unloaded
//! p99 (the 50/s phase's); after the 200/s phase: the first sample with the admission
//! probability back at 1, the share of samples from 10 s after with it below 1, the first whole
//! second with no refusal, and the shares of requests refused from 10 s after to the end, by
//! anything and by the admission controller.
//!
//! At the end, the criteria for the PID row, per seed, each marked met or missed. The
//! last line is `summary: pid_goodput=F pid_settle_s=S best_other_goodput=F
//! best_other_settle_s=S` for the step scenario, means over the seeds; "best other" is the best
//! of no control, fixed limit, gradient, P and PI on each figure separately.
//!
//! Run it with `cargo run --release --example pid_step` (a few minutes, the Netflix runs being
//! 400 s of simulated time each; the runs use two threads). `-- --seeds 1,2,3,4,5` picks the
//! seeds (default 1,2,3), `-- --only step` or `-- --only netflix` runs one scenario.
//! `BACKSTOP_IDLE_RELEASE=0` turns the controllers' idle release off (see `idle_release`).

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
/// The controller's [`idle_release`](backstop::pid::AdmissionControllerBuilder::idle_release):
/// `BACKSTOP_IDLE_RELEASE=0` turns it off, to compare with the shed unwinding at the
/// integral's own pace; default the library's (0.25).
fn idle_release() -> f64 {
    std::env::var("BACKSTOP_IDLE_RELEASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.25)
}

/// The seeds when `--seeds` is not given.
const SEEDS: [u64; 3] = [1, 2, 3];

/// The command line: `--seeds 1,2,3,4,5` (default 1,2,3) and `--only step|netflix` (default
/// both).
struct Args {
    seeds: Vec<u64>,
    step: bool,
    netflix: bool,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let seeds = value("--seeds").map_or(SEEDS.to_vec(), |list| {
        list.split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("--seeds: a comma-separated list of integers")
            })
            .collect()
    });
    let only = value("--only");
    Args {
        seeds,
        step: only.as_deref() != Some("netflix"),
        netflix: only.as_deref() != Some("step"),
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Control {
    None,
    Fixed,
    Gradient,
    Line,
    P,
    Pi,
    PidAlone,
    PidRandom,
    Pid,
}

impl Control {
    fn name(self) -> &'static str {
        match self {
            Control::None => "no control",
            Control::Fixed => "fixed limit",
            Control::Gradient => "gradient",
            Control::Line => "line alone",
            Control::P => "P",
            Control::Pi => "PI",
            Control::PidAlone => "PID alone",
            Control::PidRandom => "PID random",
            Control::Pid => "PID",
        }
    }

    fn is_pid(self) -> bool {
        !matches!(
            self,
            Control::None | Control::Fixed | Control::Gradient | Control::Line
        )
    }

    /// The rows the PID row is compared with, per the issue.
    fn is_other(self) -> bool {
        matches!(
            self,
            Control::None
                | Control::Fixed
                | Control::Gradient
                | Control::Line
                | Control::P
                | Control::Pi
        )
    }
}

/// One row: how the server is controlled, and the PID rows' queue-delay setpoint.
#[derive(Clone, Copy, Debug)]
struct Row {
    control: Control,
    setpoint: f64,
}

/// The recommended configuration's recipe, from the setpoint.
#[derive(Clone, Copy, Debug)]
struct Recipe {
    /// The hysteresis, as a share of the setpoint.
    band: f64,
    /// The line, in setpoints' worth of the server's drain.
    line: f64,
    /// The low-pass filter on the signal.
    filter: Duration,
    /// The jump of the signal, as a share of the setpoint, that halves the filter's time
    /// constant (the adaptive filter).
    filter_scale: f64,
    /// How fast the integral follows what the floor let in.
    floor_tracking: Duration,
}

const RECIPE: Recipe = Recipe {
    band: 0.3,
    line: 1.8,
    filter: Duration::from_secs(1),
    filter_scale: 1.0,
    floor_tracking: Duration::from_secs(60),
};
/// One server set-up.
#[derive(Clone, Copy)]
struct Setup {
    workers: usize,
    mean: Duration,
    fixed_waiting: usize,
}

const STEP: Setup = Setup {
    workers: 10,
    mean: Duration::from_millis(100),
    fixed_waiting: 5,
};

const NETFLIX: Setup = Setup {
    workers: 2,
    mean: Duration::from_millis(18),
    fixed_waiting: 2,
};

impl Setup {
    fn capacity(&self) -> f64 {
        self.workers as f64 / self.mean.as_secs_f64()
    }

    /// The PID's line: what the server drains in `RECIPE.line` setpoints.
    fn pid_line(&self, setpoint: f64) -> usize {
        (RECIPE.line * setpoint * self.capacity()).round().max(1.0) as usize
    }
}

/// The gains, tuned at a 50 ms setpoint and scaled inversely with it.
fn gains(control: Control, setpoint: f64) -> (f64, f64, f64) {
    let (kp, ki, kd) = match control {
        Control::P => (2.0, 0.0, 0.0),
        Control::Pi => (2.0, 20.0, 0.0),
        Control::Pid => (2.0, 26.0, 0.4),
        _ => (2.0, 20.0, 0.2),
    };
    let scale = 0.050 / setpoint;
    (kp * scale, ki * scale, kd * scale)
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
    /// Refused by the admission controller (the rest of `refused` by a line).
    denied: u64,
}

struct Run {
    report: SimReport,
    samples: Vec<Sample>,
    accepted: Vec<(Duration, Duration)>,
}

fn run(
    setup: Setup,
    row: Row,
    profile: LoadProfile,
    surge: (Duration, Duration),
    seed: u64,
) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let start = Instant::now();
        let control = row.control;
        let max_waiting = match control {
            Control::Fixed => setup.fixed_waiting,
            Control::Pid | Control::Line => setup.pid_line(row.setpoint),
            _ => 100_000,
        };
        let queue = BackpressureLayer::builder(control.name())
            .max_in_flight(setup.workers)
            .max_waiting(max_waiting)
            .build()
            .expect("valid queue");
        let limiter: Limiter = queue.limiter().clone();
        let controller = control.is_pid().then(|| {
            let (kp, ki, kd) = gains(control, row.setpoint);
            let band = if control == Control::Pid {
                RECIPE.band * row.setpoint
            } else {
                0.0
            };
            AdmissionController::builder(control.name(), QueueDelay::of_limiter(&limiter))
                .setpoint(row.setpoint)
                .gains(kp, ki, kd)
                .dead_band(band)
                .measurement_filter(if control == Control::Pid {
                    RECIPE.filter
                } else {
                    Duration::ZERO
                })
                .adaptive_filter(if control == Control::Pid {
                    RECIPE.filter_scale * row.setpoint
                } else {
                    0.0
                })
                .floor_tracking(if control == Control::Pid {
                    RECIPE.floor_tracking
                } else {
                    Duration::from_secs(4)
                })
                .tick(TICK)
                .seed(seed)
                .draw(if control == Control::PidRandom {
                    Draw::Random
                } else {
                    Draw::Even
                })
                .idle_release(idle_release())
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
        let scenario = Scenario::builder(control.name())
            .seed(seed)
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
                    denied: c3.as_ref().map_or(0, |c| c.denied()),
                };
                s2.lock().unwrap().push(sample);
            }
        });
        let report = scenario.run_async().await;
        let samples = samples.lock().unwrap().clone();
        let accepted = tally.accepted.lock().unwrap().clone();
        Run {
            report,
            samples,
            accepted,
        }
    })
}

/// Runs every job on two threads (the runs are independent), keeping the order.
fn run_all<J: Sync, R: Send>(jobs: &[J], f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(jobs.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = f(job);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
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

/// (max |x − mean| / mean, mean) of a series.
fn relative_swing(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let worst = xs.iter().map(|x| (x - mean).abs()).fold(0.0, f64::max);
    Some((worst / mean, mean))
}

/// The share of arriving requests the whole stack admitted, per second, from `from` to `to`.
fn admitted_per_second(r: &Run, from: Duration, to: Duration) -> Vec<f64> {
    admitted_share(r, from, 10)
        .into_iter()
        .filter(|(t, _)| *t < to)
        .map(|(_, s)| s)
        .collect()
}

/// Seconds after `from` until the first sample with the admission probability at 1.
fn probability_first_back(r: &Run, from: Duration) -> Option<f64> {
    r.samples
        .iter()
        .find(|s| s.t >= from && s.probability.is_some_and(|p| p >= 1.0))
        .map(|s| secs(s.t - from))
}

/// The share of the samples from `from` on with the admission probability below 1.
fn probability_low(r: &Run, from: Duration) -> f64 {
    let after: Vec<&Sample> = r.samples.iter().filter(|s| s.t >= from).collect();
    let low = after
        .iter()
        .filter(|s| s.probability.is_some_and(|p| p < 1.0))
        .count();
    low as f64 / after.len().max(1) as f64
}

/// The shares of the requests arriving from `from` on that anything refused, and that the
/// admission controller refused.
fn refused_share(r: &Run, from: Duration) -> (f64, f64) {
    let at = r.samples.iter().find(|s| s.t >= from).expect("sampled");
    let last = r.samples.last().expect("sampled");
    let offered = (last.offered - at.offered).max(1) as f64;
    (
        (last.refused - at.refused) as f64 / offered,
        (last.denied - at.denied) as f64 / offered,
    )
}

/// Seconds after `from` until the first whole second in which nothing was refused.
fn first_full_second(r: &Run, from: Duration) -> Option<f64> {
    admitted_share(r, from, 10)
        .iter()
        .find(|(_, share)| *share >= 1.0)
        .map(|(t, _)| secs(*t - from))
}

fn fmt_opt(x: Option<f64>, unit: &str) -> String {
    x.map_or("never".to_owned(), |v| format!("{v:.1}{unit}"))
}

fn fmt_swing(x: Option<(f64, f64)>) -> String {
    x.map_or("-".to_owned(), |(rel, mean)| {
        format!("{:.1}% of {mean:.2}", 100.0 * rel)
    })
}

// ---------------------------------------------------------------------------------------------
// The step scenario.
// ---------------------------------------------------------------------------------------------

const STEP_TARGET: f64 = 0.050;

const STEP_ROWS: [Control; 9] = [
    Control::None,
    Control::Fixed,
    Control::Gradient,
    Control::Line,
    Control::P,
    Control::Pi,
    Control::PidAlone,
    Control::PidRandom,
    Control::Pid,
];

struct StepFigures {
    control: Control,
    seed: u64,
    goodput: f64,
    settle: Option<f64>,
    peak: f64,
    delay_p99: f64,
    p_swing: Option<(f64, f64)>,
    share_swing: Option<(f64, f64)>,
    back: Option<f64>,
    refused: f64,
    /// The share of the refusals that the admission controller made.
    by_pid: f64,
    /// 100 ms samples in the surge with nobody waiting (the server may idle).
    empty: usize,
}

fn step_scenario(seeds: &[u64]) -> Vec<StepFigures> {
    let s = Duration::from_secs;
    let (warm, surge, cool) = (s(10), s(20), s(10));
    let cap = STEP.capacity();
    let profile = LoadProfile::new()
        .step(warm, 0.5 * cap)
        .step(surge, 3.0 * cap)
        .step(cool, 0.5 * cap);
    let (from, to) = (warm, warm + surge);
    let bound = 2.0 * STEP_TARGET;
    let jobs: Vec<(u64, Control)> = seeds
        .iter()
        .flat_map(|seed| STEP_ROWS.iter().map(move |c| (*seed, *c)))
        .collect();
    let figures = run_all(&jobs, |&(seed, control)| {
        let row = Row {
            control,
            setpoint: STEP_TARGET,
        };
        let r = run(STEP, row, profile.clone(), (from, to), seed);
        let last = r.samples.last().expect("sampled");
        StepFigures {
            control,
            seed,
            goodput: goodput(&r, from, to, cap),
            settle: settle(&r, from, to, bound),
            peak: r
                .samples
                .iter()
                .filter(|x| x.t >= from && x.t < to)
                .map(|x| x.delay)
                .fold(0.0, f64::max),
            delay_p99: delay_p99(&r, from + s(2), to),
            p_swing: relative_swing(&per_second(&r, from + s(5), to, |s| s.probability)),
            share_swing: relative_swing(&admitted_per_second(&r, from + s(5), to)),
            back: full_admission_stays(&r, to),
            refused: last.refused as f64 / last.offered.max(1) as f64,
            by_pid: last.denied as f64 / last.refused.max(1) as f64,
            empty: r
                .samples
                .iter()
                .filter(|x| x.t >= from && x.t < to && x.delay == 0.0)
                .count(),
        }
    });

    println!(
        "step: capacity {cap:.0} req/s, 50% -> 300% at {}s -> 50% at {}s; target queue delay {:.0} ms; PID line {}",
        secs(from),
        secs(to),
        1e3 * STEP_TARGET,
        STEP.pid_line(STEP_TARGET),
    );
    for &seed in seeds {
        println!("seed {seed}");
        println!(
            "  {:<12} {:>8} {:>5} {:>7} {:>8} {:>9} {:>14} {:>14} {:>9} {:>8} {:>6}",
            "row",
            "goodput",
            "empty",
            "settle",
            "peak",
            "p99 >2s",
            "p swing >5s",
            "adm. swing",
            "full adm.",
            "refused",
            "by PID"
        );
        for f in figures.iter().filter(|f| f.seed == seed) {
            println!(
                "  {:<12} {:>7.2}% {:>5} {:>7} {:>5.0} ms {:>6.0} ms {:>14} {:>14} {:>9} {:>7.1}% {:>5.0}%",
                f.control.name(),
                100.0 * f.goodput,
                f.empty,
                fmt_opt(f.settle, " s"),
                1e3 * f.peak,
                1e3 * f.delay_p99,
                fmt_swing(f.p_swing),
                fmt_swing(f.share_swing),
                fmt_opt(f.back, " s"),
                100.0 * f.refused,
                100.0 * f.by_pid,
            );
        }
    }
    figures
}

// ---------------------------------------------------------------------------------------------
// The Netflix scenario.
// ---------------------------------------------------------------------------------------------

const NETFLIX_TARGET: f64 = 0.030;

const NETFLIX_ROWS: [Row; 8] = [
    Row {
        control: Control::None,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::Fixed,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::Gradient,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::Line,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::PidAlone,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::PidAlone,
        setpoint: 0.040,
    },
    Row {
        control: Control::PidRandom,
        setpoint: NETFLIX_TARGET,
    },
    Row {
        control: Control::Pid,
        setpoint: NETFLIX_TARGET,
    },
];

struct NetflixFigures {
    row: Row,
    seed: u64,
    goodput: f64,
    unloaded_p99: Option<Duration>,
    loaded_p99: Option<Duration>,
    p_first: Option<f64>,
    p_low: f64,
    first_full: Option<f64>,
    refused_after: f64,
    denied_after: f64,
}

impl NetflixFigures {
    fn ratio(&self) -> Option<f64> {
        Some(secs(self.loaded_p99?) / secs(self.unloaded_p99?))
    }
}

fn netflix_scenario(seeds: &[u64]) -> Vec<NetflixFigures> {
    let s = Duration::from_secs;
    let phase = s(100);
    let cap = NETFLIX.capacity();
    let profile = LoadProfile::new()
        .step(phase, 50.0)
        .step(phase, 90.0)
        .step(phase, 200.0)
        .step(phase, 100.0);
    let (from, to) = (2 * phase, 3 * phase);
    let jobs: Vec<(u64, Row)> = seeds
        .iter()
        .flat_map(|seed| NETFLIX_ROWS.iter().map(move |r| (*seed, *r)))
        .collect();
    let figures = run_all(&jobs, |&(seed, row)| {
        let r = run(NETFLIX, row, profile.clone(), (from, to), seed);
        NetflixFigures {
            row,
            seed,
            goodput: goodput(&r, from, to, cap),
            unloaded_p99: p99(&r, Duration::ZERO, phase),
            loaded_p99: p99(&r, from, to),
            p_first: probability_first_back(&r, to),
            p_low: probability_low(&r, to + s(10)),
            first_full: first_full_second(&r, to),
            refused_after: refused_share(&r, to + s(10)).0,
            denied_after: refused_share(&r, to + s(10)).1,
        }
    });

    println!();
    println!(
        "netflix: 2 workers, log-normal 18 ms (cv 0.5): capacity {cap:.0} req/s; Poisson 50 -> 90 -> 200 -> 100 req/s, 100 s each; PID line {}",
        NETFLIX.pid_line(NETFLIX_TARGET)
    );
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.0} ms", 1e3 * secs(d)));
    for &seed in seeds {
        println!("seed {seed}");
        println!(
            "  {:<17} {:>11} {:>7} {:>8} {:>6} {:>9} {:>8} {:>10} {:>12} {:>7}",
            "row",
            "goodput@200",
            "p99@50",
            "p99@200",
            "ratio",
            "p=1 after",
            "p<1 10s+",
            "first full",
            "refused 10s+",
            "by PID"
        );
        for f in figures.iter().filter(|f| f.seed == seed) {
            let name = if f.row.control.is_pid() {
                format!("{} {:.0} ms", f.row.control.name(), 1e3 * f.row.setpoint)
            } else {
                f.row.control.name().to_owned()
            };
            println!(
                "  {:<17} {:>10.1}% {:>7} {:>8} {:>6} {:>9} {:>8} {:>10} {:>11.2}% {:>6.2}%",
                name,
                100.0 * f.goodput,
                ms(f.unloaded_p99),
                ms(f.loaded_p99),
                f.ratio().map_or("-".to_owned(), |r| format!("{r:.2}x")),
                if f.row.control.is_pid() {
                    fmt_opt(f.p_first, " s")
                } else {
                    "-".to_owned()
                },
                if f.row.control.is_pid() {
                    format!("{:.1}%", 100.0 * f.p_low)
                } else {
                    "-".to_owned()
                },
                fmt_opt(f.first_full, " s"),
                100.0 * f.refused_after,
                100.0 * f.denied_after,
            );
        }
    }
    figures
}

// ---------------------------------------------------------------------------------------------
// The criteria, for the PID row.
// ---------------------------------------------------------------------------------------------

fn verdict(name: &str, met: bool, figures: String) -> bool {
    println!(
        "  {} {name}: {figures}",
        if met { "MET   " } else { "MISSED" }
    );
    met
}

/// The best goodput and the best settle time of the rows the PID row is compared with, for one
/// seed (each figure separately).
fn best_other(step: &[StepFigures], seed: u64) -> (f64, f64) {
    let others = || {
        step.iter()
            .filter(move |f| f.seed == seed && f.control.is_other())
    };
    (
        others().map(|f| f.goodput).fold(0.0, f64::max),
        others()
            .filter_map(|f| f.settle)
            .fold(f64::INFINITY, f64::min),
    )
}

fn step_criteria(step: &[StepFigures]) {
    let pid: Vec<&StepFigures> = step.iter().filter(|f| f.control == Control::Pid).collect();
    let list = |f: &dyn Fn(&StepFigures) -> String| {
        pid.iter().map(|x| f(x)).collect::<Vec<_>>().join(", ")
    };
    verdict(
        "step: delay within 2x target after <= 2 s",
        pid.iter().all(|f| f.settle.is_some_and(|s| s <= 2.0)),
        list(&|f| fmt_opt(f.settle, " s")),
    );
    verdict(
        "step: goodput >= 90% of capacity",
        pid.iter().all(|f| f.goodput >= 0.90),
        list(&|f| format!("{:.1}%", 100.0 * f.goodput)),
    );
    verdict(
        "step: admission probability swing < 10% of its mean from 5 s",
        pid.iter().all(|f| f.p_swing.is_some_and(|(r, _)| r < 0.10)),
        list(&|f| fmt_swing(f.p_swing)),
    );
    verdict(
        "step: admission probability swing < ±0.10 (absolute) from 5 s",
        pid.iter()
            .all(|f| f.p_swing.is_some_and(|(r, m)| r * m < 0.10)),
        list(&|f| {
            f.p_swing
                .map_or("-".to_owned(), |(r, m)| format!("±{:.3}", r * m))
        }),
    );
    verdict(
        "step: back to full admission within 2 s (every 100 ms to the end)",
        pid.iter().all(|f| f.back.is_some_and(|b| b <= 2.0)),
        list(&|f| fmt_opt(f.back, " s")),
    );
    let best_goodput = |seed| best_other(step, seed).0;
    let best_settle = |seed| best_other(step, seed).1;
    verdict(
        "step: goodput >= best other row's",
        pid.iter().all(|f| f.goodput >= best_goodput(f.seed)),
        list(&|f| {
            format!(
                "{:.2}% vs {:.2}%",
                100.0 * f.goodput,
                100.0 * best_goodput(f.seed)
            )
        }),
    );
    let fixed_empty: Vec<String> = step
        .iter()
        .filter(|f| f.control == Control::Fixed)
        .map(|f| format!("{}/200", f.empty))
        .collect();
    println!(
        "  (surge samples with an empty queue: PID {}, fixed limit {}; the same row's goodput varies by about 2 points between seeds)",
        list(&|f| format!("{}/200", f.empty)),
        fixed_empty.join(", ")
    );
    verdict(
        "step: settle time <= best other row's",
        pid.iter()
            .all(|f| f.settle.is_some_and(|s| s <= best_settle(f.seed))),
        list(&|f| {
            format!(
                "{} vs {:.1} s",
                fmt_opt(f.settle, " s"),
                best_settle(f.seed)
            )
        }),
    );
}

fn netflix_criteria(netflix: &[NetflixFigures]) {
    let pid: Vec<&NetflixFigures> = netflix
        .iter()
        .filter(|f| f.row.control == Control::Pid)
        .collect();
    let list = |f: &dyn Fn(&NetflixFigures) -> String| {
        pid.iter().map(|x| f(x)).collect::<Vec<_>>().join(", ")
    };
    verdict(
        "netflix: goodput >= 95% of capacity at 200/s",
        pid.iter().all(|f| f.goodput >= 0.95),
        list(&|f| format!("{:.1}%", 100.0 * f.goodput)),
    );
    verdict(
        "netflix: accepted p99 <= 2x unloaded p99",
        pid.iter().all(|f| f.ratio().is_some_and(|r| r <= 2.0)),
        list(&|f| f.ratio().map_or("-".to_owned(), |r| format!("{r:.2}x"))),
    );
    verdict(
        "netflix: admission probability back to 1 within 10 s",
        pid.iter().all(|f| f.p_first.is_some_and(|b| b <= 10.0)),
        list(&|f| fmt_opt(f.p_first, " s")),
    );
    verdict(
        "netflix: ... and the PID refuses < 1% of requests from 10 s after",
        pid.iter().all(|f| f.denied_after < 0.01),
        list(&|f| {
            format!(
                "{:.2}% (p < 1 in {:.1}% of samples)",
                100.0 * f.denied_after,
                100.0 * f.p_low
            )
        }),
    );
    println!(
        "  (the line still refuses bursts at 90% load: {} of requests from 10 s after, fixed limit {})",
        list(&|f| format!("{:.2}%", 100.0 * f.refused_after)),
        netflix
            .iter()
            .filter(|f| f.row.control == Control::Fixed)
            .map(|f| format!("{:.2}%", 100.0 * f.refused_after))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn main() {
    let args = args();
    let step = if args.step {
        step_scenario(&args.seeds)
    } else {
        Vec::new()
    };
    let netflix = if args.netflix {
        netflix_scenario(&args.seeds)
    } else {
        Vec::new()
    };
    println!();
    println!("criteria for the PID row (every seed must meet them):");
    if args.step {
        step_criteria(&step);
    }
    if args.netflix {
        netflix_criteria(&netflix);
    }
    if !args.step {
        return;
    }

    let mean = |xs: Vec<f64>| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let pid = step.iter().filter(|f| f.control == Control::Pid);
    let best: Vec<(f64, f64)> = args
        .seeds
        .iter()
        .map(|&seed| best_other(&step, seed))
        .collect();
    println!(
        "summary: pid_goodput={:.3} pid_settle_s={:.1} best_other_goodput={:.3} best_other_settle_s={:.1}",
        mean(pid.clone().map(|f| f.goodput).collect()),
        mean(pid.map(|f| f.settle.unwrap_or(f64::NAN)).collect()),
        mean(best.iter().map(|b| b.0).collect()),
        mean(best.iter().map(|b| b.1).collect()),
    );
}
