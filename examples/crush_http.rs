//! Crush test over real HTTP: the example server (4 workers × 20 ms = 200 requests/s) driven at
//! 3× its capacity for 4 s by an open-loop client whose callers give up after 1 s, from 32
//! clients (`x-client-id`), each a process of its own with its own token bucket.
//!
//! Five runs in one process: the baseline (no backstop layer: the workers' unbounded FIFO line,
//! callers with a plain 1 s timeout); the queue alone (server: adaptive LIFO queue → deadline
//! timeout, fed by the caller's `grpc-timeout`; client: metrics → 1 s overall timeout → retry
//! with a shared budget → hedge → token bucket → 400 ms per-attempt timeout), once with a fixed
//! bucket per client (1000/s shared out, 31/s each: above what a client offers) and once with the
//! AWS adaptive rate per client; and the full server stack (whole-client throttle → PID
//! admission → LIFO queue → deadline timeout) with the same two clients.
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
//! With `--serve SECONDS [baseline|queue|full]` it only serves, for an external load generator;
//! `scripts/crush_http.sh` installs wrk and drives it that way.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::pid::PidTerms;
use backstop::token_bucket::TokenBucket;
use support::client::{BucketSpec, ClientStack, transport};
use support::load::{CLIENTS, Tally, drive_clients};
use support::server::{PidMode, RunningServer, ServerStack, Workers, start};
use tokio::time::Instant;

const WORKERS: usize = 4;
const SERVICE_TIME: Duration = Duration::from_millis(20);
const SURGE: f64 = 3.0;
const RUN: Duration = Duration::from_secs(4);
const PATIENCE: Duration = Duration::from_secs(1);
/// How often each run samples the server's completions, the clients' bucket rates and the shed
/// fraction.
const SAMPLE: Duration = Duration::from_millis(250);

/// One sample of a run.
struct Sample {
    /// Work completed so far.
    done: u64,
    /// Each client bucket's rate (`None` while unlimited).
    rates: Vec<Option<f64>>,
    /// The PID controller's terms (full stack only): its output is the shed fraction.
    shed: Option<PidTerms>,
}

struct Run {
    tally: Tally,
    started: u64,
    completed: u64,
    abandoned: u64,
    /// The share of worker time spent working, from the first request sent to the last outcome.
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
}

async fn server(setup: Setup) -> Result<RunningServer, BoxError> {
    let workers = Workers::new(WORKERS, SERVICE_TIME);
    let stack = match setup {
        Setup::Baseline => ServerStack::none(),
        Setup::QueueOnly => ServerStack {
            throttle: None,
            pid: None,
            ..ServerStack::recommended(WORKERS)?
        },
        Setup::Full => {
            let mode = match std::env::var("BACKSTOP_PID_MODE").as_deref() {
                Ok("admission") => PidMode::Admission,
                Ok("both") => PidMode::Both,
                _ => PidMode::Throttle,
            };
            if std::env::var_os("BACKSTOP_LONG_LINE").is_some() {
                ServerStack::with_pid(WORKERS, mode)?
            } else {
                ServerStack::with_pid_short_line(WORKERS, mode, workers.capacity())?
            }
        }
    };
    start(workers, stack, support::prometheus()).await
}

/// The run's length: [`RUN`], or `BACKSTOP_CRUSH_SECONDS`.
fn run_length() -> Duration {
    std::env::var("BACKSTOP_CRUSH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RUN, |s: u64| Duration::from_secs(s.clamp(1, 120)))
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
    let sampler = {
        let stats = server.workers.stats.clone();
        let pid = server.pid.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let end = Instant::now() + run;
            let mut tick = tokio::time::interval(SAMPLE);
            while Instant::now() < end {
                tick.tick().await;
                samples.push(Sample {
                    done: stats.completed.load(Relaxed),
                    rates: buckets.iter().map(TokenBucket::rate).collect(),
                    shed: pid.as_ref().map(|c| c.terms()),
                });
            }
            samples
        })
    };
    let max = (capacity * SURGE * run.as_secs_f64() * 1.1) as u64;
    let tally = drive_clients(
        &services,
        &server.url("/work"),
        capacity * SURGE,
        run,
        max,
        PATIENCE * 10,
    )
    .await;
    let trajectory = sampler.await?;
    let busy = server.workers.stats.busy_us.load(Relaxed) as f64
        / 1e6
        / (WORKERS as f64 * tally.elapsed.as_secs_f64());
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
        let t = SAMPLE.as_secs_f64() * i as f64;
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
    let refused = server
        .queue
        .as_ref()
        .map_or(0, |q| q.stats().shed + q.stats().rejected);
    let rate = seen as f64 / window;
    let fraction = rate / server.workers.capacity();
    println!(
        "served {seen} in {window:.1} s ({rate:.0}/s, {fraction:.2} of capacity), refused {refused}, dropped by the server {}",
        stats.abandoned.load(Relaxed)
    );
    let scrape = support::client::fetch_text(&server.url("/metrics")).await?;
    for line in support::backstop_lines(&scrape)
        .iter()
        .filter(|l| l.contains("http_server"))
    {
        println!("  {line}");
    }
    println!("summary: served_per_s={rate:.0} capacity_fraction={fraction:.2} refused={refused}");
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
    ];
    let mut runs = Vec::new();
    for (name, setup, adaptive) in rows {
        let run = crush(setup, adaptive).await?;
        print(name, &run, capacity);
        if adaptive || std::env::var_os("BACKSTOP_TRAJECTORY").is_some() {
            print_trajectory(&run);
        }
        assert_eq!(
            run.tally.outcomes(),
            run.tally.sent,
            "{name}: every request has one outcome"
        );
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
         +ab:      the same with the AWS adaptive rate on the bucket (at most 1000/s over the 32 clients)."
    );
    let mut summary = format!(
        "summary: capacity={capacity:.0} offered={:.0}",
        runs[0].1.tally.offered()
    );
    for (name, run) in &runs {
        let key = name.replace("+ab", "_adaptive");
        summary += &format!(
            " {key}_goodput={:.2} {key}_p99_ms={}",
            run.tally.goodput() / capacity,
            run.tally.ok_quantile(0.99).as_millis()
        );
    }
    summary += &format!(
        " hung={}",
        runs.iter().map(|(_, r)| r.tally.hung).sum::<u64>()
    );
    println!("{summary}");
    Ok(())
}
