//! Overload with and without adaptive LIFO, on the simulation harness.
//!
//! A web service with 10 workers and a log-normal service time (mean 100 ms, cv 0.5) handles
//! 100 requests per second. Callers give up on an attempt after 1 s and retry once (a user
//! waits 2 s in all, which is also the request's deadline). Offered load is 0.5x capacity for
//! 10 s, then a surge of 2x or 5x for 60 s, then 0.5x for 60 s. The same load, with the same
//! seed, runs against three server stacks:
//!
//! - **fifo**: the unbounded FIFO queue in front of the workers (no backstop layer);
//! - **backpressure**: `BackpressureLayer` (10 in flight, 20 waiting, FIFO, `QueueFull` beyond);
//! - **lifo**: `LifoQueueLayer` (10 in flight, target 5 ms, interval 100 ms, deadlines from the
//!   request).
//!
//! Goodput counts answers delivered before the caller gave up, as a fraction of capacity,
//! averaged over the surge. Recovery is the sim's rule: the time after the surge until 5
//! consecutive seconds deliver 90% of what was offered with a median latency within 2x the
//! unloaded latency (a lower bound, marked `>=`, when the run ended first). "p50 normal after"
//! is the first second after the surge whose median latency is within 2x the unloaded one.
//!
//! The last line is `summary: fifo_goodput=F lifo_goodput=F fifo_recovery_s=S lifo_recovery_s=S`
//! for the 5x case (for fifo the recovery is a lower bound if it never recovered: see the table).
//!
//! Run it with `cargo run --release --example overload_lifo`.

use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::lifo_queue::LifoQueueLayer;
use backstop::sim::{
    CallPolicy, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario, SimReport, SimServer,
    SimService, WebApp, table,
};
use tower::Layer;

const WORKERS: usize = 10;
const CAPACITY: f64 = 100.0;
const SURGE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum Stack {
    Fifo,
    Backpressure,
    Lifo,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Fifo => "fifo",
            Stack::Backpressure => "backpressure",
            Stack::Lifo => "lifo",
        }
    }

    fn server(self, server: SimServer) -> SimService {
        match self {
            Stack::Fifo => SimService::new(server),
            Stack::Backpressure => {
                let layer = BackpressureLayer::builder("web")
                    .max_in_flight(WORKERS)
                    .max_waiting(2 * WORKERS)
                    .build()
                    .expect("valid backpressure");
                SimService::new(layer.layer(server))
            }
            Stack::Lifo => {
                let layer = LifoQueueLayer::builder("web")
                    .max_in_flight(WORKERS)
                    .build()
                    .expect("valid lifo queue");
                SimService::new(layer.layer(server))
            }
        }
    }
}

fn scenario(stack: Stack, surge_factor: f64) -> Scenario {
    let s = Duration::from_secs;
    let profile = LoadProfile::new()
        .step(s(10), 0.5 * CAPACITY)
        .step(SURGE, surge_factor * CAPACITY)
        .step(s(60), 0.5 * CAPACITY);
    let users = ClientBehavior {
        clients: 200,
        patience: s(2),
        call: CallPolicy {
            attempt_timeout: Some(s(1)),
            retry: RetryPolicy::Naive {
                retries: 1,
                backoff: Duration::ZERO,
                jitter: 0.0,
            },
        },
        reload: None,
        ..ClientBehavior::default()
    };
    Scenario::builder(format!("{} {surge_factor}x", stack.name()))
        .seed(2026)
        .profile(profile)
        .clients(users)
        .surge(s(10), s(10) + SURGE)
        .hop(
            Hop::new("web", WORKERS, WebApp::service_time())
                .stack(move |server| stack.server(server)),
        )
        .build()
        .expect("valid scenario")
}

/// Seconds after the surge until the first 1 s bucket whose median latency is within 2x the
/// unloaded latency; `None` if none in the run.
fn p50_normal_after(report: &SimReport) -> Option<f64> {
    let end = Duration::from_secs(10) + SURGE;
    let normal = report.unloaded_latency * 2;
    report
        .series
        .iter()
        .filter(|b| b.start >= end)
        .find(|b| b.p50.is_some_and(|p| p <= normal))
        .map(|b| (b.start - end).as_secs_f64())
}

fn main() {
    let mut reports = Vec::new();
    for factor in [2.0, 5.0] {
        for stack in [Stack::Fifo, Stack::Backpressure, Stack::Lifo] {
            reports.push(scenario(stack, factor).run());
        }
    }
    let refs: Vec<&SimReport> = reports.iter().collect();
    println!("{}", table(&refs));

    println!(
        "{:<18} {:>9} {:>12} {:>16} {:>10}",
        "run", "goodput", "recovery", "p50 normal after", "wasted"
    );
    for r in &reports {
        let s = &r.summary;
        println!(
            "{:<18} {:>8.0}% {:>12} {:>16} {:>9.0}%",
            r.name,
            100.0 * s.surge_goodput_fraction,
            s.recovery.to_string(),
            p50_normal_after(r).map_or("never".to_owned(), |x| format!("{x:.0} s")),
            100.0 * s.wasted_fraction(),
        );
    }

    let five = |name: &str| {
        reports
            .iter()
            .find(|r| r.name == format!("{name} 5x"))
            .expect("ran")
    };
    let (fifo, lifo) = (five("fifo"), five("lifo"));
    println!();
    println!("lifo 5x, seconds around the end of the surge:");
    let series = lifo.series_table();
    let mut lines = series.lines();
    if let Some(header) = lines.next() {
        println!("{header}");
    }
    for line in lines.skip(66).take(8) {
        println!("{line}");
    }
    println!(
        "summary: fifo_goodput={:.2} lifo_goodput={:.2} fifo_recovery_s={:.0} lifo_recovery_s={:.0}",
        fifo.summary.surge_goodput_fraction,
        lifo.summary.surge_goodput_fraction,
        fifo.summary.recovery.seconds().unwrap_or(f64::NAN),
        lifo.summary.recovery.seconds().unwrap_or(f64::NAN),
    );
}
