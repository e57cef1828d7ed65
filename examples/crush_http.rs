//! Crush test over real HTTP: the example server (4 workers × 20 ms = 200 requests/s) driven at
//! 3× its capacity for 4 s by an open-loop client whose callers give up after 1 s, from 32
//! clients (`x-client-id`), each a process of its own with its own token bucket.
//!
//! Six runs in one process: the baseline (no backstop layer: the workers' unbounded FIFO line,
//! callers with a plain 1 s timeout); the queue alone (server: adaptive LIFO queue → deadline
//! timeout, fed by the caller's `grpc-timeout`; client: metrics → 1 s overall timeout → retry
//! with a shared budget → hedge → token bucket → 400 ms per-attempt timeout), once with a fixed
//! bucket per client (1000/s shared out, 31/s each: above what a client offers) and once with the
//! AWS adaptive rate per client; and the full server stack (whole-client throttle → PID
//! admission → LIFO queue → deadline timeout) with the same two clients, and once more without
//! the PID's idle release (`full-ir`).
//!
//!     cargo run --release --example crush_http
//!
//! For each adaptive run it prints every half second what the 32 clients' buckets let them send
//! together (against the server's 200/s), and with
//! `BACKSTOP_TRAJECTORY=1` every client's rate. `BACKSTOP_CRUSH_SECONDS=N` runs N seconds instead
//! of 4 (the adaptive rate needs a few seconds to settle); `BACKSTOP_SHARED_BUCKET=1` gives all 32
//! clients one bucket, as if they were one process.
//!
//! In the full stack the PID's output sets the share of whole clients the throttle sheds; set
//! `BACKSTOP_PID_MODE=admission` to have its admission layer refuse requests instead, or `both`.
//! Its LIFO queue has the short line the PID's documentation recommends (2 × setpoint ×
//! capacity = 8 waiting) and a dead band of setpoint / 2; `BACKSTOP_LONG_LINE=1` gives it the
//! queue-only row's 1024 waiting and no band instead, where one tick's sample can jump by 25
//! setpoints and only the controller's error bound keeps it from slamming between shedding
//! nothing and shedding 95% (see `ServerStack::with_pid_short_line`).
//!
//! After each surge the load falls to 1× capacity for 3 s (`BACKSTOP_RECOVERY_SECONDS=N`), and
//! each row prints how fast it came back: the time from the end of the surge until the shed
//! fraction is first at 0 (and how often the controller shed again after that, as it may at
//! capacity), and until a 250 ms window of requests is 90% served. The row `full-ir` is the full
//! stack with the PID's `idle_release` off, the baseline the release is measured against in the
//! same run: its shed then unwinds at the integral's own pace.
//!
//! With `--serve SECONDS [baseline|queue|full]` it only serves, for an external load generator;
//! `scripts/crush_http.sh` installs wrk and drives it that way. Its summary counts every refusal
//! the stack answered, the throttle's 429s with the queue's 503s. `BACKSTOP_IDLE_RELEASE=S` sets
//! the PID's idle release in any example server (0: off).

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::pid::PidTerms;
use backstop::token_bucket::TokenBucket;
use support::client::{BucketSpec, ClientStack, transport};
use support::load::{CLIENTS, Phase, Tally, drive_phases};
use support::server::{PidMode, RunningServer, ServerStack, Workers, start};
use tokio::time::Instant;

const WORKERS: usize = 4;
const SERVICE_TIME: Duration = Duration::from_millis(20);
const SURGE: f64 = 3.0;
const RUN: Duration = Duration::from_secs(4);
/// After the surge the load falls to 1× capacity for this long: how fast does the stack let
/// everyone back in?
const RECOVERY: Duration = Duration::from_secs(3);
/// The windows (by send time) in which the recovery's goodput is judged, and the share of the
/// requests sent in each that must get a 2xx.
const RECOVERY_WINDOW: Duration = Duration::from_millis(250);
const RECOVERED: f64 = 0.9;
const PATIENCE: Duration = Duration::from_secs(1);
/// How often each run samples the server's completions, the clients' bucket rates and the shed
/// fraction.
const SAMPLE: Duration = Duration::from_millis(50);

/// One sample of a run.
struct Sample {
    /// When, from the start of the load.
    at: Duration,
    /// Work completed so far.
    done: u64,
    /// Worker time spent so far, in microseconds.
    busy_us: u64,
    /// The share of clients (or requests) the stack sheds now: the throttle's shed fraction,
    /// or the admission controller's when it refuses requests itself.
    shed_now: Option<f64>,
    /// Each client bucket's rate (`None` while unlimited).
    rates: Vec<Option<f64>>,
    /// The PID controller's terms (full stack only): its output is the shed fraction.
    shed: Option<PidTerms>,
}

struct Run {
    /// The surge's requests.
    tally: Tally,
    /// The requests sent after the surge, at 1× capacity.
    recovery: Tally,
    /// How long the surge lasted.
    surge: Duration,
    started: u64,
    completed: u64,
    abandoned: u64,
    /// The share of worker time spent working during the surge.
    busy: f64,
    /// Every [`SAMPLE`] from the start, the work completed so far and each bucket's rate
    /// (`None` while unlimited).
    trajectory: Vec<Sample>,
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// No backstop layer: the workers' unbounded FIFO line; callers with a plain timeout.
    Baseline,
    /// Server: adaptive LIFO queue → deadline timeout only; backstop's client stack.
    QueueOnly,
    /// Server: throttle → PID admission → LIFO queue → deadline timeout; backstop's client stack.
    Full,
    /// [`Full`](Self::Full) with the controller's idle release off: after the surge the shed
    /// unwinds at the integral's own pace (the behaviour before the release existed).
    FullNoIdleRelease,
}

async fn server(setup: Setup) -> Result<RunningServer, BoxError> {
    // The recorder first: the throttle, queue and PID register their series when they are
    // built, and a recorder installed after that never sees them.
    let prometheus = support::prometheus();
    let workers = Workers::new(WORKERS, SERVICE_TIME);
    let stack = match setup {
        Setup::Baseline => ServerStack::none(),
        Setup::QueueOnly => ServerStack {
            throttle: None,
            pid: None,
            ..ServerStack::recommended(WORKERS)?
        },
        Setup::Full | Setup::FullNoIdleRelease => {
            let mode = match std::env::var("BACKSTOP_PID_MODE").as_deref() {
                Ok("admission") => PidMode::Admission,
                Ok("both") => PidMode::Both,
                _ => PidMode::Throttle,
            };
            let long = std::env::var_os("BACKSTOP_LONG_LINE").is_some();
            match (setup, long) {
                (Setup::FullNoIdleRelease, _) => ServerStack::with_pid_idle_release(
                    WORKERS,
                    mode,
                    (!long).then(|| workers.capacity()),
                    0.0,
                )?,
                (_, true) => ServerStack::with_pid(WORKERS, mode)?,
                (_, false) => ServerStack::with_pid_short_line(WORKERS, mode, workers.capacity())?,
            }
        }
    };
    start(workers, stack, prometheus).await
}

/// The run's length: [`RUN`], or `BACKSTOP_CRUSH_SECONDS`.
fn run_length() -> Duration {
    std::env::var("BACKSTOP_CRUSH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RUN, |s: u64| Duration::from_secs(s.clamp(1, 120)))
}

/// The recovery phase's length: [`RECOVERY`], or `BACKSTOP_RECOVERY_SECONDS`.
fn recovery_length() -> Duration {
    std::env::var("BACKSTOP_RECOVERY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RECOVERY, |s: u64| Duration::from_secs(s.clamp(1, 60)))
}

/// How fast a run came back after its surge, from the end of the surge.
struct Recovery {
    /// Until the first sample with the shed fraction at 0 (`None` if it never was, or for a
    /// stack with nothing to shed).
    shed_zero: Option<Duration>,
    /// The share of the samples after that with a shed fraction above 0 again: at 1× load
    /// the controller may shed a little now and then, as it should at capacity.
    reshed: f64,
    /// Until the first [`RECOVERY_WINDOW`] of requests (by send time) with at least
    /// [`RECOVERED`] of them served (`None`: not within the run).
    goodput_back: Option<Duration>,
    /// The share of the requests sent after the surge that got a 2xx.
    served: f64,
}

impl Recovery {
    /// The later of the two: when the stack was fully back. `None` if either never was.
    fn both(&self, shedding: bool) -> Option<Duration> {
        match (self.shed_zero, self.goodput_back) {
            (_, None) => None,
            (None, Some(_)) if shedding => None,
            (shed, Some(goodput)) => Some(shed.unwrap_or_default().max(goodput)),
        }
    }
}

fn recovery(run: &Run) -> Recovery {
    let surge = run.surge;
    let after: Vec<&Sample> = run.trajectory.iter().filter(|s| s.at >= surge).collect();
    let zero = after.iter().position(|s| s.shed_now == Some(0.0));
    let shed_zero = zero.map(|i| after[i].at - surge);
    let later = zero.map_or(&[][..], |i| &after[i..]);
    let reshed = later
        .iter()
        .filter(|s| s.shed_now.unwrap_or(0.0) > 0.0)
        .count() as f64
        / later.len().max(1) as f64;
    let sent = &run.recovery.sent_at;
    let windows = (run.recovery.sending.as_secs_f64() / RECOVERY_WINDOW.as_secs_f64()) as u32;
    let good = |k: u32| {
        let (from, to) = (
            surge + RECOVERY_WINDOW * k,
            surge + RECOVERY_WINDOW * (k + 1),
        );
        let window: Vec<bool> = sent
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, ok)| *ok)
            .collect();
        !window.is_empty()
            && window.iter().filter(|ok| **ok).count() as f64 >= RECOVERED * window.len() as f64
    };
    let goodput_back = (0..windows).find(|k| good(*k)).map(|k| RECOVERY_WINDOW * k);
    Recovery {
        shed_zero,
        reshed,
        goodput_back,
        served: run.recovery.ok as f64 / (run.recovery.sent.max(1)) as f64,
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("none".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
}

async fn crush(setup: Setup, adaptive: bool) -> Result<Run, BoxError> {
    let server = server(setup).await?;
    let capacity = server.workers.capacity();
    let mut stack = match (setup, adaptive) {
        (Setup::Baseline, _) => ClientStack::plain(PATIENCE),
        (_, false) => ClientStack::recommended()?,
        (_, true) => ClientStack::with_adaptive_bucket()?,
    };
    let shared = std::env::var_os("BACKSTOP_SHARED_BUCKET").is_some();
    if shared && let Some(spec) = &stack.bucket {
        stack.bucket = Some(BucketSpec::Shared(spec.make()?));
    }
    let clients = stack.build_clients(transport(), CLIENTS)?;
    let mut buckets: Vec<TokenBucket> = clients.iter().filter_map(|c| c.bucket.clone()).collect();
    if shared {
        buckets.truncate(1);
    }
    let services: Vec<_> = clients.into_iter().map(|c| c.service).collect();
    let run = run_length();
    let recovery = recovery_length();
    let start = Instant::now();
    let sampler = {
        let stats = server.workers.stats.clone();
        let pid = server.pid.clone();
        let shed = server.shed.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let end = start + run + recovery;
            let mut tick = tokio::time::interval(SAMPLE);
            while Instant::now() < end {
                tick.tick().await;
                samples.push(Sample {
                    at: start.elapsed(),
                    done: stats.completed.load(Relaxed),
                    busy_us: stats.busy_us.load(Relaxed),
                    shed_now: match (&shed, &pid) {
                        (Some(shed), _) => Some(shed.get()),
                        (None, Some(pid)) => Some(pid.shed_fraction()),
                        (None, None) => None,
                    },
                    rates: buckets.iter().map(TokenBucket::rate).collect(),
                    shed: pid.as_ref().map(|c| c.terms()),
                });
            }
            samples
        })
    };
    let phases = [
        Phase {
            rate: capacity * SURGE,
            duration: run,
        },
        Phase {
            rate: capacity,
            duration: recovery,
        },
    ];
    let max = (capacity * (SURGE * run.as_secs_f64() + recovery.as_secs_f64()) * 1.1) as u64;
    let mut tallies =
        drive_phases(&services, &server.url("/work"), &phases, max, PATIENCE * 10).await;
    let trajectory = sampler.await?;
    let recovery_tally = tallies.pop().unwrap_or_default();
    let tally = tallies.pop().unwrap_or_default();
    // Worker time over the surge: the first sample at or after its end.
    let busy_us = trajectory
        .iter()
        .find(|s| s.at >= run)
        .map_or(0, |s| s.busy_us);
    let busy = busy_us as f64 / 1e6 / (WORKERS as f64 * run.as_secs_f64());
    // Let abandoned handler work finish or be dropped before reading the server's figures.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = &server.workers.stats;
    if let Some(q) = &server.queue {
        let q = q.stats();
        println!(
            "  (server: {} retries and {} hedges seen; shed fraction at the end {:.2}; queue served fifo {} lifo {}, shed {}, full {})",
            stats.retries.load(Relaxed),
            stats.hedges.load(Relaxed),
            server.shed.as_ref().map_or(0.0, |s| s.get()),
            q.served_fifo,
            q.served_lifo,
            q.shed,
            q.rejected
        );
    }
    Ok(Run {
        tally,
        recovery: recovery_tally,
        surge: run,
        started: stats.started.load(Relaxed),
        completed: stats.completed.load(Relaxed),
        abandoned: stats.abandoned.load(Relaxed),
        busy,
        trajectory,
    })
}

/// The run's trajectory: every half second, what the server completed in it (per second) and
/// what the clients' buckets let them send: the sum over the clients of the bucket's rate or
/// what the client offers, whichever is lower (∞ while any client is unlimited), with the
/// lowest, median and highest client rate; in the full stack, the PID's shed fraction then, its
/// error (the queue's expected wait less the setpoint) and its integral term.
fn print_trajectory(run: &Run) {
    let Some(mut done_before) = run.trajectory.first().map(|s| s.done) else {
        return;
    };
    let step = (Duration::from_millis(500).as_millis() / SAMPLE.as_millis()) as usize;
    let mut line =
        String::from("  t(s)  served/s  clients may send /s (client rates min/median/max)");
    if run.trajectory[0].shed.is_some() {
        line += "  | shed fraction (error, integral)";
    }
    line += "\n";
    for (i, sample) in run.trajectory.iter().enumerate() {
        let (done, rates) = (&sample.done, &sample.rates);
        if i == 0 || i % step != 0 {
            continue;
        }
        let served = (done - done_before) as f64 / (SAMPLE * step as u32).as_secs_f64();
        done_before = *done;
        let unlimited = rates.iter().filter(|r| r.is_none()).count();
        let mut limited: Vec<f64> = rates.iter().flatten().copied().collect();
        limited.sort_by(f64::total_cmp);
        let t = sample.at.as_secs_f64();
        let sum = if rates.is_empty() {
            "no bucket".to_owned()
        } else if unlimited > 0 {
            format!("∞ ({unlimited} unlimited)")
        } else {
            let offered = SURGE * WORKERS as f64 / SERVICE_TIME.as_secs_f64() / CLIENTS as f64;
            let usable: f64 = limited.iter().map(|r| r.min(offered)).sum();
            format!("{usable:.0}")
        };
        let spread = match limited.len() {
            0 => String::new(),
            n => format!(
                " ({:.1}/{:.1}/{:.1})",
                limited[0],
                limited[n / 2],
                limited[n - 1]
            ),
        };
        let shed = sample.shed.map_or(String::new(), |terms| {
            format!(
                "  | {:.2} ({:+.0} ms, {:.2})",
                terms.output,
                terms.error * 1000.0,
                terms.i
            )
        });
        let row = format!(
            "  {t:>4.1}  {served:>8.0}  {sum:<30}{shed}",
            sum = sum + &spread
        );
        line += row.trim_end();
        line += "\n";
    }
    print!("{line}");
    if std::env::var_os("BACKSTOP_TRAJECTORY").is_some() {
        let clients = run.trajectory[0].rates.len();
        for c in 0..clients {
            let rates: Vec<String> = run
                .trajectory
                .iter()
                .map(|s| s.rates[c].map_or("∞".to_owned(), |r| format!("{r:.1}")))
                .collect();
            println!("  client-{c:<2} {}", rates.join(" "));
        }
    }
}

fn print(name: &str, run: &Run, capacity: f64) {
    let t = &run.tally;
    println!(
        "{name:<9} offered {:>5.0}/s  goodput {:>5.0}/s ({:.2} of capacity)  p50 {:>4} ms  p99 {:>4} ms  \
         refused 429 {:>5} 503 {:>5}  refused by the client's own bucket or budget {:>5}  client timeouts {:>5}  other {:>4}  \
         workers busy {:.2}  work started {:>5}, cut off mid-way {:>4}, requests dropped by the server {:>5}  hung {}",
        t.offered(),
        t.goodput(),
        t.goodput() / capacity,
        t.ok_quantile(0.5).as_millis(),
        t.ok_quantile(0.99).as_millis(),
        t.refused_429,
        t.refused_503,
        t.client_overload,
        t.client_timeout,
        t.client_error + t.statuses.iter().map(|(_, n)| n).sum::<u64>(),
        run.busy,
        run.started,
        run.started - run.completed,
        run.abandoned,
        t.hung,
    );
    let r = recovery(run);
    let shedding = run.trajectory.iter().any(|s| s.shed_now.is_some());
    println!(
        "          after the surge, at 1x for {:.0} s: shed fraction at 0 after {} s{}, goodput back (a {} ms window of requests {:.0}% served) after {} s; {:.2} of those requests served{}",
        run.recovery.sending.as_secs_f64(),
        if shedding {
            seconds(r.shed_zero)
        } else {
            "-".to_owned()
        },
        if shedding {
            format!(
                " (above 0 again in {:.0}% of the samples after)",
                r.reshed * 100.0
            )
        } else {
            String::new()
        },
        RECOVERY_WINDOW.as_millis(),
        RECOVERED * 100.0,
        seconds(r.goodput_back),
        r.served,
        if run.recovery.hung > 0 {
            " (some hung!)"
        } else {
            ""
        },
    );
}

async fn serve(seconds: u64, setup: Setup) -> Result<(), BoxError> {
    let server = server(setup).await?;
    println!(
        "listening on {} (capacity {:.0}/s) for {seconds} s",
        server.url("/work"),
        server.workers.capacity()
    );
    // The rate is measured from the first request to the last answer, not over the idle ends.
    let stats = &server.workers.stats;
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut first, mut last, mut seen) = (None, None, 0);
    // Every half second once requests come: served per second, and in the full stack the
    // shed fraction with the PID's error and integral (printed at the end).
    let (mut trajectory, mut next_sample, mut seen_at_sample) = (String::new(), None, 0);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = tokio::time::Instant::now();
        if first.is_none() && stats.arrived.load(Relaxed) > 0 {
            first = Some(now);
            next_sample = Some(now + Duration::from_millis(500));
        }
        let done = stats.completed.load(Relaxed);
        if done != seen {
            (seen, last) = (done, Some(now));
        }
        if let (Some(at), Some(start)) = (next_sample, first)
            && now >= at
            && done > seen_at_sample
        {
            trajectory += &format!(
                "  {:>5.1}  {:>8.0}",
                (now - start).as_secs_f64(),
                (done - seen_at_sample) as f64 / 0.5
            );
            if let Some(terms) = server.pid.as_ref().map(|c| c.terms()) {
                trajectory += &format!(
                    "  | {:.2} ({:+.0} ms, {:.2})",
                    terms.output,
                    terms.error * 1000.0,
                    terms.i
                );
            }
            trajectory += "\n";
            (next_sample, seen_at_sample) = (Some(at + Duration::from_millis(500)), done);
        }
    }
    println!("   t(s)  served/s  | shed fraction (error, integral)\n{trajectory}");
    let window = match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 1.0,
    };
    // Every refusal the stack answered: the throttle's 429s (quota, shed clients) and the
    // queue's or the admission layer's 503s.
    let (refused_429, refused_503) = (
        stats.refused_429.load(Relaxed),
        stats.refused_503.load(Relaxed),
    );
    let refused = refused_429 + refused_503;
    let rate = seen as f64 / window;
    let fraction = rate / server.workers.capacity();
    println!(
        "served {seen} in {window:.1} s ({rate:.0}/s, {fraction:.2} of capacity), refused {refused} (429 {refused_429}, 503 {refused_503}), dropped by the server {}",
        stats.abandoned.load(Relaxed)
    );
    let scrape = support::client::fetch_text(&server.url("/metrics")).await?;
    for line in support::backstop_lines(&scrape)
        .iter()
        .filter(|l| l.contains("http_server"))
    {
        println!("  {line}");
    }
    println!(
        "summary: served_per_s={rate:.0} capacity_fraction={fraction:.2} refused={refused} refused_429={refused_429} refused_503={refused_503}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let seconds = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(15)
            .min(600);
        let setup = match args.get(3).map(String::as_str) {
            Some("baseline") => Setup::Baseline,
            Some("queue") => Setup::QueueOnly,
            _ => Setup::Full,
        };
        return serve(seconds, setup).await;
    }
    let capacity = WORKERS as f64 / SERVICE_TIME.as_secs_f64();
    let run = run_length();
    println!(
        "server: {WORKERS} workers x {} ms = {capacity:.0} requests/s; load {SURGE}x = {:.0}/s for {} s from {CLIENTS} clients; callers give up after {} s",
        SERVICE_TIME.as_millis(),
        capacity * SURGE,
        run.as_secs(),
        PATIENCE.as_secs()
    );
    let rows = [
        ("baseline", Setup::Baseline, false),
        ("queue", Setup::QueueOnly, false),
        ("queue+ab", Setup::QueueOnly, true),
        ("full", Setup::Full, false),
        ("full+ab", Setup::Full, true),
        ("full-ir", Setup::FullNoIdleRelease, false),
    ];
    let mut runs = Vec::new();
    for (name, setup, adaptive) in rows {
        let run = crush(setup, adaptive).await?;
        print(name, &run, capacity);
        if adaptive || std::env::var_os("BACKSTOP_TRAJECTORY").is_some() {
            print_trajectory(&run);
        }
        for tally in [&run.tally, &run.recovery] {
            assert_eq!(
                tally.outcomes(),
                tally.sent,
                "{name}: every request has one outcome"
            );
        }
        runs.push((name, run));
    }
    let line = if std::env::var_os("BACKSTOP_LONG_LINE").is_some() {
        "1024 waiting, no dead band"
    } else {
        "8 waiting, dead band 10 ms"
    };
    let shared = if std::env::var_os("BACKSTOP_SHARED_BUCKET").is_some() {
        "one bucket shared by all 32 clients"
    } else {
        "a bucket per client"
    };
    println!(
        "\nbaseline: no backstop layer (an unbounded FIFO line; callers with a plain 1 s timeout).\n\
         queue:    server LIFO queue -> deadline timeout; client metrics -> 1 s -> retry budget -> hedge\n          \
         -> token bucket (fixed: 1000/s over the 32 clients) -> 400 ms; {shared}.\n\
         full:     server throttle (a quota per client, and the share of clients to shed set by the PID\n          \
         admission controller from the queue's expected wait) -> LIFO queue ({line}) -> deadline timeout;\n          \
         same client.\n\
         +ab:      the same with the AWS adaptive rate on the bucket (at most 1000/s over the 32 clients).\n\
         full-ir:  full with the PID's idle release off: after the surge its shed unwinds at the integral's pace.\n\
         After each surge the load falls to 1x capacity: \"back\" is the time from the end of the surge until\n\
         the shed fraction is 0 and a {} ms window of requests sent is {:.0}% served, whichever is later.",
        RECOVERY_WINDOW.as_millis(),
        RECOVERED * 100.0
    );
    let mut summary = format!(
        "summary: capacity={capacity:.0} offered={:.0}",
        runs[0].1.tally.offered()
    );
    for (name, run) in &runs {
        let key = name
            .replace("+ab", "_adaptive")
            .replace("-ir", "_no_idle_release");
        summary += &format!(
            " {key}_goodput={:.2} {key}_p99_ms={}",
            run.tally.goodput() / capacity,
            run.tally.ok_quantile(0.99).as_millis()
        );
    }
    for (name, run) in &runs {
        let key = name
            .replace("+ab", "_adaptive")
            .replace("-ir", "_no_idle_release");
        let shedding = run.trajectory.iter().any(|s| s.shed_now.is_some());
        summary += &format!(" {key}_back_s={}", seconds(recovery(run).both(shedding)));
    }
    summary += &format!(
        " hung={}",
        runs.iter()
            .map(|(_, r)| r.tally.hung + r.recovery.hung)
            .sum::<u64>()
    );
    println!("{summary}");
    Ok(())
}
