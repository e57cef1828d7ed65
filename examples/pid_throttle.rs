//! The preferred wiring of PID admission control: the controller's shed fraction drives the
//! whole-client throttle, so load falls by whole clients instead of random requests.
//!
//! A server of 10 workers, log-normal 100 ms (cv 0.5): 100 calls/s, behind a `BackpressureLayer`
//! line of 10 (2 × 50 ms × 100/s). 400 users make chains of 3 dependent calls, each tried up
//! to 3 times (naive retries), and wait 3 s. Poisson load: 20 chains/s (60% of capacity) for
//! 10 s, 60 chains/s (180%) for 30 s, 20 chains/s for 10 s. Rows: **line alone**; **PID per
//! request**: `AdmissionLayer`, recommended configuration (50 ms, hysteresis 25 ms, even draws);
//! **PID -> throttle**: the same controller, ticked by `run_ticker`, hands its shed fraction to
//! a `ShedFraction` (`on_shed_fraction`), and a `ThrottleLayer` keyed by client refuses whole
//! clients.
//!
//! Over the surge from 5 s after the step: chains completed per second (the server can finish
//! 33.3), calls reaching the server per second (retries included), the line's refusals per
//! second, the queue delay (oldest waiter, 100 ms samples: mean, p99), the mean shed share
//! (requests or clients), and "mixed": of the clients the controller refused in a second, the
//! share it also served that second. Refusing whole clients, only those at the margin are mixed:
//! the ones whose hash lies in the range the shed fraction moved over within the second. The
//! last line is `summary: ...` with every figure. Run: `cargo run --release --example pid_throttle`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::pid::{AdmissionController, AdmissionLayer, Draw, QueueDelay};
use backstop::sim::{Arrivals, ClientBehavior, Hop, LoadProfile, RetryPolicy};
use backstop::sim::{Scenario, ServiceTime, SimRequest, SimService};
use backstop::throttle::{ClientId, ShedFraction, ThrottleLayer};
use backstop::{OverloadReason, find_overload};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Line,
    PerRequest,
    Throttle,
}

/// Per second: clients served, clients the controller refused, the line's refusals.
type Seen = HashMap<u64, (HashSet<u32>, HashSet<u32>, u64)>;

fn run(row: Row) -> [f64; 7] {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    rt.expect("runtime").block_on(async move {
        let start = Instant::now();
        let line = BackpressureLayer::builder("backpressure")
            .max_in_flight(10)
            .max_waiting(10)
            .build();
        let line = line.expect("valid");
        let limiter = line.limiter().clone();
        let shed = ShedFraction::builder("clients").seed(7).epoch_origin(start);
        let shed = shed.build().expect("valid");
        let to_throttle = shed.clone();
        let controller =
            AdmissionController::builder("admission", QueueDelay::of_limiter(&limiter))
                .setpoint(0.050)
                .dead_band(0.025)
                .draw(Draw::Even)
                .on_shed_fraction(move |s| to_throttle.set(s))
                .build()
                .expect("valid");
        if row == Row::Throttle {
            // No request passes through an AdmissionLayer: tick on a timer.
            tokio::spawn(controller.clone().run_ticker());
        }
        let key = |r: &SimRequest| Some(ClientId::from(r.client));
        let throttle = ThrottleLayer::builder("throttle", key).shed(shed.clone());
        let throttle = throttle.build().expect("valid");
        let seen = Arc::new(Mutex::new(Seen::new()));
        let (ctl, seen2) = (controller.clone(), seen.clone());
        let service = ServiceTime::LogNormal {
            mean: Duration::from_millis(100),
            cv: 0.5,
        };
        let hop = Hop::new("api", 10, service).stack(move |server| {
            let lined = SimService::new(line.layer(server));
            let inner = match row {
                Row::Line => lined,
                Row::PerRequest => SimService::new(AdmissionLayer::new(ctl.clone()).layer(lined)),
                Row::Throttle => SimService::new(throttle.layer(lined)),
            };
            let seen = seen2.clone();
            SimService::new(tower::service_fn(move |req: SimRequest| {
                let (inner, seen, client) = (inner.clone(), seen.clone(), req.client);
                async move {
                    let result = inner.oneshot(req).await;
                    let mut seen = seen.lock().unwrap();
                    let (ok, refused, full) = seen.entry(start.elapsed().as_secs()).or_default();
                    match &result {
                        Ok(_) => _ = ok.insert(client),
                        Err(e) => match find_overload(e.as_ref()).map(|o| o.reason()) {
                            Some(OverloadReason::QueueFull) => *full += 1,
                            Some(_) => _ = refused.insert(client),
                            None => {}
                        },
                    }
                    result
                }
            }))
        });
        let s = Duration::from_secs;
        let mut users = ClientBehavior::default();
        (users.clients, users.patience, users.chain.calls) = (400, s(3), 3);
        let backoff = Duration::from_millis(5);
        users.call.retry = RetryPolicy::Naive {
            retries: 2,
            backoff,
            jitter: 0.5,
        };
        let scenario = Scenario::builder("pid_throttle")
            .seed(11)
            .arrivals(Arrivals::Poisson)
            .profile(
                LoadProfile::new()
                    .step(s(10), 20.0)
                    .step(s(30), 60.0)
                    .step(s(10), 20.0),
            )
            .clients(users)
            .surge(s(10), s(40))
            .hop(hop)
            .build()
            .expect("valid scenario");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let samples2 = samples.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                let now = interval.tick().await;
                let delay = limiter.oldest_wait().map_or(0.0, |d| d.as_secs_f64());
                // With the line alone nothing ticks the controller: its share stays 0.
                let share = controller.shed_fraction();
                samples2.lock().unwrap().push((now - start, delay, share));
            }
        });
        let report = scenario.run_async().await;
        let (from, to) = (s(15), s(40));
        let secs = (to - from).as_secs_f64();
        let surge = report
            .series
            .iter()
            .filter(|b| b.start >= from && b.start < to);
        let chains = surge.clone().map(|b| b.goodput).sum::<u64>() as f64 / secs;
        let calls = surge.map(|b| b.attempts).sum::<u64>() as f64 / secs;
        let samples = samples.lock().unwrap();
        let samples: Vec<_> = samples.iter().filter(|x| x.0 >= from && x.0 < to).collect();
        let mut delays: Vec<f64> = samples.iter().map(|x| x.1).collect();
        delays.sort_by(f64::total_cmp);
        let shed_share = samples.iter().map(|x| x.2).sum::<f64>() / samples.len() as f64;
        let seen = seen.lock().unwrap();
        let seconds = (from.as_secs()..to.as_secs()).filter_map(|t| seen.get(&t));
        let (mixed, refused, full) = seconds.fold((0, 0, 0), |(m, r, f), (ok, no, line)| {
            (m + no.intersection(ok).count(), r + no.len(), f + line)
        });
        let mean_delay = delays.iter().sum::<f64>() / delays.len() as f64;
        let (p99, line_rate) = (delays[delays.len() * 99 / 100], full as f64 / secs);
        let mixed = mixed as f64 / refused.max(1) as f64;
        [chains, calls, line_rate, mean_delay, p99, shed_share, mixed]
    })
}

fn main() {
    println!(
        "capacity 100 calls/s = 33.3 chains/s; surge 60 chains/s (180%), from 5 s after the step"
    );
    let head = "row              chains/s  calls/s  line/s   delay     p99  shed mixed";
    println!("{head}");
    let rows = [
        (Row::Line, "line alone"),
        (Row::PerRequest, "PID per request"),
        (Row::Throttle, "PID -> throttle"),
    ];
    let f: Vec<[f64; 7]> = rows.iter().map(|(row, _)| run(*row)).collect();
    for ((_, name), [chains, calls, line, delay, p99, shed, mixed]) in rows.iter().zip(&f) {
        let (delay, p99, shed, mixed) = (1e3 * delay, 1e3 * p99, 100.0 * shed, 100.0 * mixed);
        println!(
            "{name:<16} {chains:>8.1} {calls:>8.1} {line:>7.1} {delay:>4.0} ms {p99:>4.0} ms {shed:>4.0}% {mixed:>4.0}%"
        );
    }
    let keys = [
        "chains_per_s",
        "calls_per_s",
        "line_per_s",
        "delay_s",
        "delay_p99_s",
        "shed",
        "mixed",
    ];
    let rows = [("throttle", f[2]), ("per_request", f[1]), ("line", f[0])];
    let pairs = rows.iter().flat_map(|(row, v)| {
        keys.iter()
            .zip(v)
            .map(move |(k, x)| format!("{row}_{k}={x:.3}"))
    });
    println!("summary: {}", pairs.collect::<Vec<_>>().join(" "));
}
