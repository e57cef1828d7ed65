//! Little's-law metrics over real HTTP, and the Prometheus endpoint that exports them.
//!
//!     cargo run --release --example pattern_little_metrics
//!
//! Server: 4 workers x 20 ms = 200 requests/s on 127.0.0.1 (port picked at run time), behind
//! the metered server stack. Load: 50%, then 90% of capacity, 2 s each. For each, the meter's
//! arrival rate x mean latency (Little's law) is set beside the concurrency it measured, and the
//! headroom left; then `/metrics` is scraped and every `backstop_` series printed, zeros included.

#[path = "support/http/mod.rs"]
mod support;

use std::time::Duration;

use backstop::BoxError;
use backstop::metrics::LittleMeter;
use support::client::{ClientStack, fetch_text, transport};
use support::load::drive;
use support::server::{ServerStack, Workers, start};

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(20);
const RUN: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prometheus = support::prometheus();
    let mut workers = Workers::new(WORKERS, SERVICE);
    workers.exponential = true; // a realistic spread of service times, same mean
    // One meter at the top of the server (what callers see: waiting included) and one around
    // the workers alone, whose capacity is the worker count.
    let worker_meter = LittleMeter::builder("http_workers")
        .capacity(WORKERS as f64)
        .window(Duration::from_secs(1))
        .build()?;
    let stack = ServerStack {
        worker_meter: Some(worker_meter.clone()),
        ..ServerStack::recommended(WORKERS)?
    };
    let server = start(workers, stack, prometheus).await?;
    let capacity = server.workers.capacity();
    let client = ClientStack::recommended()?.build(transport())?;

    println!(
        "server: {WORKERS} workers, mean service time {} ms (exponential): capacity {capacity:.0}/s\n",
        SERVICE.as_millis()
    );
    println!(
        "{:>6} {:>10} | {:>14} {:>8} {:>10} | {:>12} {:>8} {:>10} {:>11}",
        "load",
        "arrivals/s",
        "server mean ms",
        "L = λW",
        "L measured",
        "work mean ms",
        "L = λW",
        "L measured",
        "utilization"
    );
    let mut utilizations = Vec::new();
    for load in [0.5, 0.9] {
        let (before, work_before) = (server.meter.snapshot(), worker_meter.snapshot());
        let rate = load * capacity;
        let max = (rate * RUN.as_secs_f64()) as u64 + 10;
        let tally = drive(
            &client,
            &server.url("/work"),
            rate,
            RUN,
            max,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(tally.outcomes(), tally.sent, "one outcome per request");
        let r = server.meter.snapshot().since(&before);
        let w = worker_meter.snapshot().since(&work_before);
        let (mean, work_mean) = (
            r.mean_latency.unwrap_or_default(),
            w.mean_latency.unwrap_or_default(),
        );
        // The worker meter's capacity is the worker count, so utilization = L / workers.
        let utilization = w.utilization.unwrap_or_default();
        utilizations.push(utilization);
        println!(
            "{:>5.0}% {:>10.1} | {:>14.1} {:>8.2} {:>10.2} | {:>12.1} {:>8.2} {:>10.2} {:>10.0}%",
            load * 100.0,
            r.arrival_rate,
            mean.as_secs_f64() * 1e3,
            r.arrival_rate * mean.as_secs_f64(),
            r.average_concurrency,
            work_mean.as_secs_f64() * 1e3,
            w.arrival_rate * work_mean.as_secs_f64(),
            w.average_concurrency,
            utilization * 100.0
        );
    }
    println!(
        "\nL = λW: the average number of requests inside equals the arrival rate times the mean \
         time each spends there. Around the whole server L counts the waiting too; around the \
         {WORKERS} workers it is their busy share, the headroom figure to alarm on (say at 80%)."
    );

    let scrape = fetch_text(&server.url("/metrics")).await?;
    let lines = support::backstop_lines(&scrape);
    println!(
        "\nGET {} ({} backstop_ series):",
        server.url("/metrics"),
        lines.len()
    );
    for line in &lines {
        println!("  {line}");
    }
    let zeros = lines.iter().filter(|l| l.ends_with(" 0")).count();
    println!(
        "{zeros} of them read 0: a zero says nothing went wrong; a missing series would say \
         reporting broke."
    );
    println!(
        "summary: capacity={capacity:.0} utilization_50={:.2} utilization_90={:.2} series={} zero_series={zeros}",
        utilizations[0],
        utilizations[1],
        lines.len()
    );
    Ok(())
}
