//! Backpressure over real HTTP: a bounded line in front of the workers, and an immediate 503 +
//! Retry-After for everyone past it, instead of an unbounded line that makes everyone late.
//!
//!     cargo run --release --example pattern_backpressure
//!
//! Server: 4 workers x 25 ms = 160 requests/s on 127.0.0.1 (port picked at run time). Load: 480
//! requests/s for 3 s, open loop; callers give up after 2 s.

#[path = "support/http/mod.rs"]
mod support;

use std::time::Duration;

use backstop::BoxError;
use backstop::backpressure::BackpressureLayer;
use support::client::{ClientStack, transport};
use support::load::{Tally, drive};
use support::server::{ServerStack, Workers, start, wrap};

const WORKERS: usize = 4;
const WAITING: usize = 8;
const SERVICE: Duration = Duration::from_millis(25);
const PATIENCE: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(3);

async fn run(bounded: bool) -> Result<Tally, BoxError> {
    // The recorder first: a layer registers its series when it is built, and a recorder
    // installed after that never sees them (`/metrics` would lack the queue's).
    let prometheus = support::prometheus();
    let mut stack = ServerStack::none();
    if bounded {
        let layer = BackpressureLayer::builder("http_server")
            .max_in_flight(WORKERS)
            .max_waiting(WAITING)
            .hold_until_body_end()
            .build()?;
        stack.admission = Some(Box::new(move |svc| wrap(svc, layer)));
    }
    let server = start(Workers::new(WORKERS, SERVICE), stack, prometheus).await?;
    let rate = 3.0 * server.workers.capacity();
    let client = ClientStack::plain(PATIENCE).build(transport())?;
    let max = (rate * RUN.as_secs_f64()) as u64 + 10;
    let tally = drive(&client, &server.url("/work"), rate, RUN, max, PATIENCE * 5).await;
    assert_eq!(tally.outcomes(), tally.sent, "one outcome per request");
    Ok(tally)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let capacity = WORKERS as f64 / SERVICE.as_secs_f64();
    println!(
        "server capacity {capacity:.0}/s; offered {:.0}/s for {} s; callers give up after {} s\n",
        capacity * 3.0,
        RUN.as_secs(),
        PATIENCE.as_secs()
    );
    let open = run(false).await?;
    let bounded = run(true).await?;
    for (name, t) in [("unbounded line", &open), ("backpressure 4+8", &bounded)] {
        println!(
            "{name:<17} served {:>4} ({:.2} of capacity): p50 {:>4} ms, p99 {:>4} ms | \
             refused with 503 {:>4}: p50 {:>2} ms, Retry-After on {} | gave up {:>4}",
            t.ok,
            t.goodput() / capacity,
            t.ok_quantile(0.5).as_millis(),
            t.ok_quantile(0.99).as_millis(),
            t.refused_503,
            t.refused_quantile(0.5).as_millis(),
            t.refused_503 - t.refused_without_retry_after,
            t.client_timeout,
        );
    }
    let bound = (WAITING / WORKERS + 1) as u32 * SERVICE;
    println!(
        "\nWith the line bounded at {WAITING}, no one waits much longer than ({WAITING}/{WORKERS} + 1) x {} ms = {} ms,",
        SERVICE.as_millis(),
        bound.as_millis()
    );
    println!(
        "and the rest learn at once that they should come back later; the unbounded line grows by \
         {:.0} requests every second and makes every caller late.",
        2.0 * capacity
    );
    println!(
        "summary: capacity={capacity:.0} unbounded_p99_ms={} bounded_p99_ms={} bounded_refusal_p50_ms={} unbounded_goodput={:.2} bounded_goodput={:.2}",
        open.ok_quantile(0.99).as_millis(),
        bounded.ok_quantile(0.99).as_millis(),
        bounded.refused_quantile(0.5).as_millis(),
        open.goodput() / capacity,
        bounded.goodput() / capacity,
    );
    Ok(())
}
