//! Adaptive LIFO queue over real HTTP: at 3x capacity, FIFO serves callers who have already
//! left; the adaptive LIFO queue serves the newest first and sheds stale waiters.
//!
//!     cargo run --release --example pattern_lifo_queue
//!
//! Server: 4 workers x 25 ms = 160 requests/s on 127.0.0.1 (port picked at run time). Load: 480
//! requests/s for 3 s, open loop; each caller gives up after 500 ms.

#[path = "support/http/mod.rs"]
mod support;

use std::time::Duration;

use backstop::BoxError;
use backstop::lifo_queue::LifoQueueLayer;
use support::client::{ClientStack, transport};
use support::load::{Tally, drive};
use support::server::{ServerStack, Workers, start};

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(25);
const PATIENCE: Duration = Duration::from_millis(500);
const RUN: Duration = Duration::from_secs(3);

async fn run(lifo: bool) -> Result<(Tally, Option<backstop::lifo_queue::QueueStats>), BoxError> {
    // The recorder first: a layer registers its series when it is built, and a recorder
    // installed after that never sees them (`/metrics` would lack the queue's).
    let prometheus = support::prometheus();
    let mut stack = ServerStack::none();
    if lifo {
        let layer = LifoQueueLayer::builder("http_server")
            .max_in_flight(WORKERS)
            .hold_until_body_end()
            .build()?;
        stack.lifo = Some(layer);
    }
    let server = start(Workers::new(WORKERS, SERVICE), stack, prometheus).await?;
    let rate = 3.0 * server.workers.capacity();
    // The callers: a plain timeout, no retries, so only the server's queue differs.
    let client = ClientStack::plain(PATIENCE).build(transport())?;
    let max = (rate * RUN.as_secs_f64()) as u64 + 10;
    let tally = drive(&client, &server.url("/work"), rate, RUN, max, PATIENCE * 10).await;
    assert_eq!(tally.outcomes(), tally.sent, "one outcome per request");
    Ok((tally, server.queue.as_ref().map(|q| q.stats())))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let capacity = WORKERS as f64 / SERVICE.as_secs_f64();
    println!(
        "server capacity {capacity:.0}/s; offered {:.0}/s for {} s; callers give up after {} ms\n",
        capacity * 3.0,
        RUN.as_secs(),
        PATIENCE.as_millis()
    );
    let (fifo, _) = run(false).await?;
    let (lifo, stats) = run(true).await?;
    for (name, t) in [
        ("FIFO (no queue layer)", &fifo),
        ("adaptive LIFO queue", &lifo),
    ] {
        println!(
            "{name:<22} answered in time {:>5} ({:.2} of capacity), p50 {:>3} ms, p99 {:>3} ms; \
             shed with 503 {:>4} (after p99 {} ms); callers who gave up waiting {:>4}",
            t.ok,
            t.goodput() / capacity,
            t.ok_quantile(0.5).as_millis(),
            t.ok_quantile(0.99).as_millis(),
            t.refused_503,
            t.refused_quantile(0.99).as_millis(),
            t.client_timeout,
        );
    }
    if let Some(s) = stats {
        println!(
            "\nThe LIFO queue served {} waiters oldest-first while healthy and {} newest-first while \
             behind, and shed {} that had waited past the CoDel bound (5 ms once behind).",
            s.served_fifo, s.served_lifo, s.shed
        );
    }
    println!(
        "With FIFO every worker serves the oldest waiter, whose caller is about to leave; with \
         the LIFO queue the workers stay busy with requests whose callers are still there."
    );
    println!(
        "summary: capacity={capacity:.0} fifo_goodput={:.2} lifo_goodput={:.2} fifo_p99_ms={} lifo_p99_ms={}",
        fifo.goodput() / capacity,
        lifo.goodput() / capacity,
        fifo.ok_quantile(0.99).as_millis(),
        lifo.ok_quantile(0.99).as_millis()
    );
    Ok(())
}
