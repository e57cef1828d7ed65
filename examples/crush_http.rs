//! Crush test over real HTTP: the example server (4 workers × 20 ms = 200 requests/s) driven at
//! 3× its capacity for 5 s by an open-loop client whose callers give up after 1 s.
//!
//! Two runs in one process: the baseline (no backstop layer: the workers' unbounded FIFO line,
//! callers with a plain 1 s timeout) and backstop's stacks (server: adaptive LIFO queue →
//! deadline timeout, fed by the caller's `grpc-timeout`; client: metrics → 1 s overall timeout →
//! retry with a shared budget → 400 ms per-attempt timeout).
//!
//!     cargo run --release --example crush_http
//!
//! With `--serve SECONDS [baseline|backstop]` it only serves, for an external load generator;
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
const RUN: Duration = Duration::from_secs(5);
const PATIENCE: Duration = Duration::from_secs(1);

struct Run {
    tally: Tally,
    started: u64,
    completed: u64,
    abandoned: u64,
}

async fn server(backstop: bool) -> Result<RunningServer, BoxError> {
    let workers = Workers::new(WORKERS, SERVICE_TIME);
    let stack = if backstop {
        ServerStack::recommended(WORKERS)?
    } else {
        ServerStack::none()
    };
    start(workers, stack, support::prometheus()).await
}

async fn crush(backstop: bool) -> Result<Run, BoxError> {
    let server = server(backstop).await?;
    let capacity = server.workers.capacity();
    let stack = if backstop {
        ClientStack::recommended()?
    } else {
        ClientStack {
            meter: None,
            overall: Some(PATIENCE),
            budget: None,
            attempt: None,
        }
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
         refused 503 {:>5}  client timeouts {:>5}  other {:>4}  work started {:>5}, cut off mid-way {:>4}, requests dropped by the server {:>5}  hung {}",
        t.offered(),
        t.goodput(),
        t.goodput() / capacity,
        t.ok_quantile(0.5).as_millis(),
        t.ok_quantile(0.99).as_millis(),
        t.refused_503 + t.refused_429,
        t.client_timeout,
        t.client_error + t.client_overload + t.statuses.iter().map(|(_, n)| n).sum::<u64>(),
        run.started,
        run.started - run.completed,
        run.abandoned,
        t.hung,
    );
}

async fn serve(seconds: u64, backstop: bool) -> Result<(), BoxError> {
    let server = server(backstop).await?;
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
        return serve(seconds, args.get(3).map(String::as_str) != Some("baseline")).await;
    }
    let capacity = WORKERS as f64 / SERVICE_TIME.as_secs_f64();
    println!(
        "server: {WORKERS} workers x {} ms = {capacity:.0} requests/s; load {SURGE}x = {:.0}/s for {} s; callers give up after {} s",
        SERVICE_TIME.as_millis(),
        capacity * SURGE,
        RUN.as_secs(),
        PATIENCE.as_secs()
    );
    let fifo = crush(false).await?;
    print("baseline", &fifo, capacity);
    let lifo = crush(true).await?;
    print("backstop", &lifo, capacity);
    for (name, run) in [("baseline", &fifo), ("backstop", &lifo)] {
        assert_eq!(
            run.tally.outcomes(),
            run.tally.sent,
            "{name}: every request has one outcome"
        );
    }
    println!(
        "summary: capacity={capacity:.0} offered={:.0} baseline_goodput={:.2} backstop_goodput={:.2} baseline_p99_ms={} backstop_p99_ms={} hung={}",
        lifo.tally.offered(),
        fifo.tally.goodput() / capacity,
        lifo.tally.goodput() / capacity,
        fifo.tally.ok_quantile(0.99).as_millis(),
        lifo.tally.ok_quantile(0.99).as_millis(),
        fifo.tally.hung + lifo.tally.hung,
    );
    Ok(())
}
