//! Hedged requests over real HTTP: one duplicate of a request that is late, the first success
//! wins, at most 5% extra load.
//!
//!     cargo run --release --example pattern_hedge
//!
//! Server on 127.0.0.1 (port picked at run time): 64 workers, 5 ms per request, but 3% of
//! requests hit a 150 ms stall. 600 requests at 150/s, first with a plain client, then with the
//! hedge layer (delay = the p95 of recent latencies).

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::classify::HttpClassifier;
use backstop::hedge::HedgeLayer;
use support::client::{ClientStack, transport};
use support::load::{Tally, drive};
use support::server::{ServerStack, Workers, start};

const REQUESTS: u64 = 600;
const RATE: f64 = 150.0;

async fn run(hedge: Option<HedgeLayer<HttpClassifier>>) -> Result<(Tally, u64, u64), BoxError> {
    let mut workers = Workers::new(64, Duration::from_millis(5));
    workers.slow = Some((0.03, Duration::from_millis(150)));
    let server = start(workers, ServerStack::none(), support::prometheus()).await?;
    let stack = ClientStack {
        hedge,
        ..ClientStack::plain(Duration::from_secs(2))
    };
    let client = stack.build(transport())?;
    let run = Duration::from_secs_f64(REQUESTS as f64 / RATE + 1.0);
    let bound = Duration::from_secs(10);
    let tally = drive(&client, &server.url("/work"), RATE, run, REQUESTS, bound).await;
    assert_eq!(tally.outcomes(), tally.sent, "one outcome per request");
    let stats = &server.workers.stats;
    Ok((
        tally,
        stats.arrived.load(Relaxed),
        stats.hedges.load(Relaxed),
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let _ = support::prometheus();
    let (plain, plain_sent, _) = run(None).await?;
    let hedge = HedgeLayer::builder("http_client")
        .classifier(HttpClassifier)
        .min_samples(50) // start hedging after 50 latencies (default 100)
        .build()?;
    let layer = hedge.clone();
    let (hedged, hedged_sent, duplicates) = run(Some(hedge)).await?;

    println!("{REQUESTS} requests at {RATE}/s; 3% of them stall for 150 ms on the server:\n");
    println!(
        "{:<14} {:>7} {:>7} {:>7} {:>8} {:>22}",
        "", "p50 ms", "p95 ms", "p99 ms", "max ms", "requests at the server"
    );
    for (name, t, sent) in [
        ("plain", &plain, plain_sent),
        ("hedged", &hedged, hedged_sent),
    ] {
        println!(
            "{name:<14} {:>7} {:>7} {:>7} {:>8} {:>22}",
            t.ok_quantile(0.5).as_millis(),
            t.ok_quantile(0.95).as_millis(),
            t.ok_quantile(0.99).as_millis(),
            t.ok_quantile(1.0).as_millis(),
            sent
        );
    }
    let extra = duplicates as f64 / REQUESTS as f64;
    println!(
        "\nThe hedge layer sent {duplicates} duplicates ({:.1}% extra load; its budget allows 5% plus \
         5 tokens at the start) after a delay of {} ms, the p95 of the latencies it had seen. A stalled request's \
         duplicate usually lands on a healthy worker, so the caller waits about delay + 5 ms instead of 150.",
        extra * 100.0,
        layer.current_delay().unwrap_or_default().as_millis()
    );
    println!(
        "summary: plain_p99_ms={} hedged_p99_ms={} ratio={:.2} extra_load={extra:.3}",
        plain.ok_quantile(0.99).as_millis(),
        hedged.ok_quantile(0.99).as_millis(),
        hedged.ok_quantile(0.99).as_secs_f64() / plain.ok_quantile(0.99).as_secs_f64().max(1e-9)
    );
    Ok(())
}
