//! Crush test over real HTTP: the example server (4 workers × 20 ms = 200 requests/s) driven at
//! 3× its capacity for 4 s by an open-loop client whose callers give up after 1 s, from 32
//! clients (`x-client-id`).
//!
//! Three runs in one process: the baseline (no backstop layer: the workers' unbounded FIFO line,
//! callers with a plain 1 s timeout); the queue alone (server: adaptive LIFO queue → deadline
//! timeout, fed by the caller's `grpc-timeout`; client: metrics → 1 s overall timeout → retry
//! with a shared budget → 400 ms per-attempt timeout); and the full server stack (whole-client
//! throttle → PID admission → LIFO queue → deadline timeout) with the same client.
//!
//!     cargo run --release --example crush_http
//!
//! In the full stack the PID's output sets the share of whole clients the throttle sheds; set
//! `BACKSTOP_PID_MODE=admission` to have its admission layer refuse requests instead, or `both`.
//! The client's token bucket has a fixed client-wide rate (1000/s); set
//! `BACKSTOP_ADAPTIVE_BUCKET=1` for the AWS adaptive rate instead.
//!
//! With `--serve SECONDS [baseline|queue|full]` it only serves, for an external load generator;
//! `scripts/crush_http.sh` installs wrk and drives it that way.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use support::client::{ClientStack, transport};
use support::load::{Tally, drive};
use support::server::{RunningServer, ServerStack, Workers, start};

const WORKERS: usize = 4;
const SERVICE_TIME: Duration = Duration::from_millis(20);
const SURGE: f64 = 3.0;
const RUN: Duration = Duration::from_secs(4);
const PATIENCE: Duration = Duration::from_secs(1);

struct Run {
    tally: Tally,
    started: u64,
    completed: u64,
    abandoned: u64,
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
        Setup::Full => ServerStack::with_pid(
            WORKERS,
            match std::env::var("BACKSTOP_PID_MODE").as_deref() {
                Ok("admission") => support::server::PidMode::Admission,
                Ok("both") => support::server::PidMode::Both,
                _ => support::server::PidMode::Throttle,
            },
        )?,
    };
    start(workers, stack, support::prometheus()).await
}

async fn crush(setup: Setup) -> Result<Run, BoxError> {
    let server = server(setup).await?;
    let capacity = server.workers.capacity();
    let stack =
        if std::env::var_os("BACKSTOP_ADAPTIVE_BUCKET").is_some() && setup != Setup::Baseline {
            ClientStack::with_adaptive_bucket()?
        } else if setup != Setup::Baseline {
            ClientStack::recommended()?
        } else {
            ClientStack::plain(PATIENCE)
        };
    let client = stack.build(transport())?;
    let max = (capacity * SURGE * RUN.as_secs_f64() * 1.1) as u64;
    let tally = drive(
        &client,
        &server.url("/work"),
        capacity * SURGE,
        RUN,
        max,
        PATIENCE * 10,
    )
    .await;
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
    })
}

fn print(name: &str, run: &Run, capacity: f64) {
    let t = &run.tally;
    println!(
        "{name:<9} offered {:>5.0}/s  goodput {:>5.0}/s ({:.2} of capacity)  p50 {:>4} ms  p99 {:>4} ms  \
         refused 429 {:>5} 503 {:>5}  client timeouts {:>5}  other {:>4}  work started {:>5}, cut off mid-way {:>4}, requests dropped by the server {:>5}  hung {}",
        t.offered(),
        t.goodput(),
        t.goodput() / capacity,
        t.ok_quantile(0.5).as_millis(),
        t.ok_quantile(0.99).as_millis(),
        t.refused_429,
        t.refused_503,
        t.client_timeout,
        t.client_error + t.client_overload + t.statuses.iter().map(|(_, n)| n).sum::<u64>(),
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
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = tokio::time::Instant::now();
        if first.is_none() && stats.arrived.load(Relaxed) > 0 {
            first = Some(now);
        }
        let done = stats.completed.load(Relaxed);
        if done != seen {
            (seen, last) = (done, Some(now));
        }
    }
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
    println!(
        "server: {WORKERS} workers x {} ms = {capacity:.0} requests/s; load {SURGE}x = {:.0}/s for {} s; callers give up after {} s",
        SERVICE_TIME.as_millis(),
        capacity * SURGE,
        RUN.as_secs(),
        PATIENCE.as_secs()
    );
    let baseline = crush(Setup::Baseline).await?;
    print("baseline", &baseline, capacity);
    let queue = crush(Setup::QueueOnly).await?;
    print("queue", &queue, capacity);
    let full = crush(Setup::Full).await?;
    print("full", &full, capacity);
    let runs = [("baseline", &baseline), ("queue", &queue), ("full", &full)];
    for (name, run) in runs {
        assert_eq!(
            run.tally.outcomes(),
            run.tally.sent,
            "{name}: every request has one outcome"
        );
    }
    println!(
        "\nbaseline: no backstop layer (an unbounded FIFO line; callers with a plain 1 s timeout).\n\
         queue:    server LIFO queue -> deadline timeout; client metrics -> 1 s -> retry budget -> hedge\n          \
         -> token bucket (1000/s) -> 400 ms.\n\
         full:     server throttle (a quota per client, and the share of clients to shed set by the PID\n          \
         admission controller from the queue's expected wait) -> LIFO queue -> deadline timeout; same client."
    );
    println!(
        "summary: capacity={capacity:.0} offered={:.0} baseline_goodput={:.2} queue_goodput={:.2} full_goodput={:.2} baseline_p99_ms={} queue_p99_ms={} full_p99_ms={} hung={}",
        full.tally.offered(),
        baseline.tally.goodput() / capacity,
        queue.tally.goodput() / capacity,
        full.tally.goodput() / capacity,
        baseline.tally.ok_quantile(0.99).as_millis(),
        queue.tally.ok_quantile(0.99).as_millis(),
        full.tally.ok_quantile(0.99).as_millis(),
        runs.iter().map(|(_, r)| r.tally.hung).sum::<u64>(),
    );
    Ok(())
}
