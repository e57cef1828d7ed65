//! Deadline propagation over real HTTP: the client writes the time it has left into
//! `grpc-timeout`; the server reads it and stops working when the caller would have given up.
//!
//!     cargo run --release --example pattern_timeout
//!
//! Server: 2 workers, 300 ms per request, on 127.0.0.1 (port picked at run time). Ten requests at
//! once, each carrying a 100 ms deadline, through a patient gateway that waits for the answer.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::timeout::TimeoutLayer;
use http::HeaderValue;
use support::client::{ClientStack, get, transport};
use support::load::{Outcome, one};
use support::server::{ServerStack, Workers, start};
use tower::{Service, ServiceExt};

const CALLS: usize = 10;

/// Returns the worker time spent.
async fn ten_calls(read_deadline: bool) -> Result<Duration, BoxError> {
    let mut stack = ServerStack::none();
    if read_deadline {
        // The server's own limit is 2 s; the caller's grpc-timeout × 0.9 wins when sooner.
        stack.deadline = Some(TimeoutLayer::new(Duration::from_secs(2))?);
    }
    let workers = Workers::new(2, Duration::from_millis(300));
    let server = start(workers, stack, support::prometheus()).await?;
    let before = server.meter.snapshot();
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let mut gateway = transport();
        let mut req = get(&server.url("/work"));
        req.headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("100m"));
        calls.push(tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            let res = gateway.ready().await?.call(req).await?;
            Ok::<_, BoxError>((res.status().as_u16(), t.elapsed()))
        }));
    }
    let (mut late_ok, mut gateway_timeouts) = (0, 0);
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (status, took) = call.await??;
        slowest = slowest.max(took);
        match status {
            200 => late_ok += u32::from(took > Duration::from_millis(100)),
            504 => gateway_timeouts += 1,
            _ => {}
        }
    }
    let report = server.meter.snapshot().since(&before);
    let stats = &server.workers.stats;
    let busy = Duration::from_micros(stats.busy_us.load(Relaxed));
    println!(
        "{:<28} 200s after the deadline {late_ok:>2}, 504s {gateway_timeouts:>2}, all answered in {:>4} ms; \
         work finished {:>2}, cut off {:>2}; worker time {:>4} ms; server held each request {:>3} ms on average",
        if read_deadline {
            "server reads grpc-timeout:"
        } else {
            "server ignores it:"
        },
        slowest.as_millis(),
        stats.completed.load(Relaxed),
        stats.abandoned.load(Relaxed),
        busy.as_millis(),
        report.mean_latency.unwrap_or_default().as_millis(),
    );
    Ok(busy)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!(
        "{CALLS} calls at once, each with 100 ms left (grpc-timeout: 100m), to 2 workers of 300 ms:\n"
    );
    let ignored = ten_calls(false).await?;
    let read = ten_calls(true).await?;

    // The client side: the stack's per-attempt timeout writes the header by itself.
    let server = start(
        Workers::new(2, Duration::from_millis(300)),
        ServerStack::recommended(2)?,
        support::prometheus(),
    )
    .await?;
    let stack = ClientStack {
        attempt: Some(Duration::from_millis(150)),
        budget: None,
        ..ClientStack::recommended()?
    };
    let t = tokio::time::Instant::now();
    let outcome = one(
        stack.build(transport())?,
        server.url("/work"),
        0,
        Duration::from_secs(5),
    )
    .await;
    println!(
        "\nclient stack (overall 1 s -> attempt 150 ms) to the full server stack: {} after {} ms",
        match outcome {
            Outcome::Status(504) => "504 from the server, which had 0.9 x 150 ms".to_owned(),
            other => format!("{other:?}"),
        },
        t.elapsed().as_millis()
    );
    println!(
        "Without the header the server would have spent 300 ms of a worker on each call whose \
         caller had already left; with it, no worker works past the caller's deadline."
    );
    println!(
        "summary: worker_ms_ignoring_deadline={} worker_ms_reading_deadline={} ratio={:.2}",
        ignored.as_millis(),
        read.as_millis(),
        read.as_secs_f64() / ignored.as_secs_f64()
    );
    Ok(())
}
