//! Shed the right work first: criticality on a server, and clients that stop asking when refused.
//!
//! **Scenario 1.** A server of 4 workers taking 20–60 ms a request (100 requests/s) is offered
//! 300 requests/s (Poisson) for 60 s of simulated time; 30% of the requests are tagged
//! `Critical`, the rest `Sheddable`. Each caller waits 500 ms. The server stack is an
//! `AdmissionLayer` on the queue delay of a line in front of the workers. Five runs: the PID
//! admission's recommended configuration (50 ms, a `BackpressureLayer` line of 9) with every
//! request alike (the baseline); the same with `AdmissionLayer::by_criticality`, which fills the
//! shed with the lowest level first; by criticality with a 100 ms setpoint, a line of 36 and a
//! level margin of 0.2; and both configurations again with a line that, when full, evicts a
//! waiting sheddable request for a critical one (`LifoQueueLayer::by_criticality`, kept FIFO).
//! Critical traffic alone is 90% of capacity, and its own random bursts overflow a line of 9.
//! The summary reports the last row.
//!
//! **Scenario 2.** Ten clients each offer 100 requests/s (1,000/s in all) to a server that
//! accepts 100/s (its own token bucket, burst 10) and answers the rest with a 429 (an
//! `Overloaded { Throttled }` after 20 ms), for 120 s. Three runs: no client layer (the
//! baseline), a `ClientThrottleLayer` per client (K = 2, 2-minute window), and the adaptive
//! token bucket per client instead. The load ratio is requests reaching the server ÷ requests
//! it accepts, over the last 60 s.
//!
//! Everything runs on tokio's paused clock with seeded random numbers: the same output at every
//! run. The last line is
//! `summary: critical_goodput=F sheddable_goodput=F total_goodput=F server_load_ratio=F bucket_load_ratio=F`:
//! the share of critical (sheddable) requests answered within 500 ms, everything answered in
//! time ÷ capacity, and the two load ratios.
//!
//! Run it with `cargo run --release --example criticality` (`-- --seed N` for other draws).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::client_throttle::{ClientThrottle, ClientThrottleLayer};
use backstop::context::{Criticality, HasCriticality};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::pid::{AdmissionController, AdmissionLayer, Draw, QueueDelay};
use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
use backstop::{BoxError, OverloadReason, Overloaded};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

const WORKERS: usize = 4;
const MEAN_SERVICE: Duration = Duration::from_millis(40);
const CAPACITY_RPS: f64 = WORKERS as f64 / 0.040;
const OFFERED_RPS: f64 = 3.0 * CAPACITY_RPS;
const CRITICAL_SHARE: f64 = 0.3;
const PATIENCE: Duration = Duration::from_millis(500);
const RUN: Duration = Duration::from_secs(60);

type Req = http::Request<Duration>;

/// What one run of scenario 1 measured.
#[derive(Debug, Default)]
struct Served {
    critical: (u64, u64),
    sheddable: (u64, u64),
}

impl Served {
    fn critical_goodput(&self) -> f64 {
        self.critical.1 as f64 / self.critical.0 as f64
    }
    fn sheddable_goodput(&self) -> f64 {
        self.sheddable.1 as f64 / self.sheddable.0 as f64
    }
    fn total_goodput(&self) -> f64 {
        (self.critical.1 + self.sheddable.1) as f64 / (CAPACITY_RPS * RUN.as_secs_f64())
    }
}

/// One server stack of scenario 1.
#[derive(Debug, Clone, Copy)]
struct Stack {
    name: &'static str,
    by_criticality: bool,
    /// Seconds of queue delay the controller steers to.
    setpoint: f64,
    /// The line in front of the workers.
    max_waiting: usize,
    level_margin: f64,
    /// The line evicts a waiting sheddable request for a critical one when full (a
    /// `LifoQueueLayer` by criticality, its CoDel bound set past the callers' patience, in place
    /// of the `BackpressureLayer`).
    evicting_line: bool,
}

const STACKS: [Stack; 5] = [
    // The pid module's recommended configuration: 50 ms, a line of 1.8 setpoints.
    Stack {
        name: "pid, all alike",
        by_criticality: false,
        setpoint: 0.050,
        max_waiting: 9,
        level_margin: 0.1,
        evicting_line: false,
    },
    Stack {
        name: "by criticality",
        by_criticality: true,
        setpoint: 0.050,
        max_waiting: 9,
        level_margin: 0.1,
        evicting_line: false,
    },
    // Critical traffic alone is 90% of capacity here: its own bursts fill a 9-long line and
    // pass a 50 ms setpoint. A longer line and setpoint (well inside the 500 ms patience) and
    // a wider plateau between levels leave those bursts to the queue.
    Stack {
        name: "by criticality, long",
        by_criticality: true,
        setpoint: 0.100,
        max_waiting: 36,
        level_margin: 0.2,
        evicting_line: false,
    },
    Stack {
        name: "+ evicting line",
        by_criticality: true,
        setpoint: 0.050,
        max_waiting: 9,
        level_margin: 0.1,
        evicting_line: true,
    },
    Stack {
        name: "long + evicting line",
        by_criticality: true,
        setpoint: 0.100,
        max_waiting: 36,
        level_margin: 0.2,
        evicting_line: true,
    },
];

async fn scenario1(stack: Stack, seed: u64) -> Result<Served, BoxError> {
    let queue = BackpressureLayer::builder("s1")
        .max_in_flight(WORKERS)
        .max_waiting(stack.max_waiting)
        .build()?;
    let evicting = LifoQueueLayer::builder("s1")
        .max_in_flight(WORKERS)
        .max_waiting(stack.max_waiting)
        // FIFO throughout (the queue never counts as behind within the run), as the
        // backpressure line: this row measures the eviction alone.
        .interval(Duration::from_secs(3600))
        .target(PATIENCE)
        .by_criticality(Criticality::Sheddable)
        .build()?;
    let signal = if stack.evicting_line {
        QueueDelay::of_queue(evicting.queue())
    } else {
        QueueDelay::of_limiter(queue.limiter())
    };
    let scale = 0.050 / stack.setpoint;
    let controller = AdmissionController::builder("s1", signal)
        .setpoint(stack.setpoint)
        .dead_band(0.3 * stack.setpoint)
        .measurement_filter(Duration::from_secs(1))
        .adaptive_filter(stack.setpoint)
        .gains(2.0 * scale, 26.0 * scale, 0.4 * scale)
        .floor_tracking(Duration::from_secs(60))
        .draw(Draw::Even)
        .level_margin(stack.level_margin)
        .build()?;
    let admission = AdmissionLayer::new(controller);
    let handler = tower::service_fn(|req: Req| async move {
        tokio::time::sleep(*req.body()).await;
        Ok::<_, BoxError>(())
    });
    let server: BoxCloneService<Req, (), BoxError> = if stack.evicting_line {
        let stack = ServiceBuilder::new()
            .layer(admission.by_criticality(Criticality::Sheddable))
            .layer(evicting)
            .service(handler);
        BoxCloneService::new(stack)
    } else if stack.by_criticality {
        // Untagged requests would count as sheddable; here every request is tagged.
        let stack = ServiceBuilder::new()
            .layer(admission.by_criticality(Criticality::Sheddable))
            .layer(queue)
            .service(handler);
        BoxCloneService::new(stack)
    } else {
        let stack = ServiceBuilder::new()
            .layer(admission)
            .layer(queue)
            .service(handler);
        BoxCloneService::new(stack)
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let start = Instant::now();
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / OFFERED_RPS;
        if t >= RUN.as_secs_f64() {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
        let critical = rng.random::<f64>() < CRITICAL_SHARE;
        let service = MEAN_SERVICE.mul_f64(0.5 + rng.random::<f64>());
        let mut req = Req::new(service);
        req.set_criticality(if critical {
            Criticality::Critical
        } else {
            Criticality::Sheddable
        });
        let (svc, counts) = (server.clone(), counts.clone());
        tokio::spawn(async move {
            let k = if critical { 0 } else { 2 };
            counts[k].fetch_add(1, Relaxed);
            // The caller stops waiting after its patience; the server's work is dropped too.
            if let Ok(Ok(())) = tokio::time::timeout(PATIENCE, svc.oneshot(req)).await {
                counts[k + 1].fetch_add(1, Relaxed);
            }
        });
    }
    tokio::time::sleep(PATIENCE * 2).await;
    Ok(Served {
        critical: (counts[0].load(Relaxed), counts[1].load(Relaxed)),
        sheddable: (counts[2].load(Relaxed), counts[3].load(Relaxed)),
    })
}

const CLIENTS: usize = 10;
const CLIENT_RPS: f64 = 100.0;
const SERVER_RPS: f64 = 100.0;
const SERVER_BURST: f64 = 10.0;
const SERVER_LATENCY: Duration = Duration::from_millis(20);
const RUN2: Duration = Duration::from_secs(120);
/// The load ratio is measured after this much time, once every client layer has settled.
const MEASURE_FROM: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientLayer {
    None,
    Throttle,
    Bucket,
}

/// Requests reaching the server and requests it accepted, after `MEASURE_FROM`.
async fn scenario2(layer: ClientLayer, seed: u64) -> Result<(u64, u64), BoxError> {
    let start = Instant::now();
    let limit = Arc::new(Mutex::new((SERVER_BURST, start)));
    let counts: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let server = {
        let counts = counts.clone();
        tower::service_fn(move |_: ()| {
            let now = Instant::now();
            let accepted = {
                let mut l = limit.lock().unwrap();
                l.0 = (l.0 + (now - l.1).as_secs_f64() * SERVER_RPS).min(SERVER_BURST);
                l.1 = now;
                let ok = l.0 >= 1.0;
                if ok {
                    l.0 -= 1.0;
                }
                ok
            };
            if now - start >= MEASURE_FROM {
                counts[0].fetch_add(1, Relaxed);
                counts[1].fetch_add(u64::from(accepted), Relaxed);
            }
            async move {
                tokio::time::sleep(SERVER_LATENCY).await;
                if accepted {
                    Ok(())
                } else {
                    Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
                }
            }
        })
    };
    let mut clients = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let name = format!("client-{c}");
        let client: BoxCloneService<(), (), BoxError> = match layer {
            ClientLayer::None => BoxCloneService::new(server.clone()),
            ClientLayer::Throttle => {
                let throttle = ClientThrottle::builder(name)
                    .k(2.0)
                    .window(Duration::from_secs(120))
                    .seed(seed + c as u64)
                    .build()?;
                BoxCloneService::new(
                    ServiceBuilder::new()
                        .layer(ClientThrottleLayer::new(throttle))
                        .service(server.clone()),
                )
            }
            ClientLayer::Bucket => {
                let bucket = TokenBucket::builder(name)
                    .adaptive(AdaptiveRate::aws().build()?)
                    .build()?;
                BoxCloneService::new(
                    ServiceBuilder::new()
                        .layer(TokenBucketLayer::new(bucket))
                        .service(server.clone())
                        .map_err(Into::<BoxError>::into),
                )
            }
        };
        clients.push(client);
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let total_rps = CLIENTS as f64 * CLIENT_RPS;
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / total_rps;
        if t >= RUN2.as_secs_f64() {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
        let client = clients[rng.random_range(0..CLIENTS)].clone();
        tokio::spawn(async move {
            // Refusals (local or the server's) are the point of the scenario.
            let _ = client.oneshot(()).await;
        });
    }
    tokio::time::sleep(SERVER_LATENCY * 2).await;
    Ok((counts[0].load(Relaxed), counts[1].load(Relaxed)))
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    // `--seed N` runs other random draws (default 1).
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = match args.iter().position(|a| a == "--seed") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or("--seed N")?,
        None => 1,
    };
    println!(
        "scenario 1: {WORKERS} workers, {CAPACITY_RPS:.0} requests/s capacity, {OFFERED_RPS:.0}/s offered \
         ({:.0}% critical), {} ms patience, {} s",
        CRITICAL_SHARE * 100.0,
        PATIENCE.as_millis(),
        RUN.as_secs()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "server stack", "critical", "crit_ok", "sheddable", "shed_ok", "goodput"
    );
    let mut by_level = None;
    for stack in STACKS {
        let served = scenario1(stack, seed).await?;
        println!(
            "{:<22} {:>10} {:>10.3} {:>10} {:>10.3} {:>10.3}",
            stack.name,
            served.critical.0,
            served.critical_goodput(),
            served.sheddable.0,
            served.sheddable_goodput(),
            served.total_goodput()
        );
        // The summary reports the last stack.
        by_level = Some(served);
    }
    let served = by_level.expect("ran");

    println!(
        "\nscenario 2: {CLIENTS} clients × {CLIENT_RPS:.0}/s against a server accepting {SERVER_RPS:.0}/s \
         (429 beyond), {} s, measured over the last {} s",
        RUN2.as_secs(),
        (RUN2 - MEASURE_FROM).as_secs()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>12}",
        "client layer", "reached", "accepted", "load_ratio"
    );
    let mut ratios = [0.0; 3];
    for (i, (name, layer)) in [
        ("none", ClientLayer::None),
        ("client throttle K=2", ClientLayer::Throttle),
        ("adaptive bucket", ClientLayer::Bucket),
    ]
    .into_iter()
    .enumerate()
    {
        let (reached, accepted) = scenario2(layer, seed + 1).await?;
        ratios[i] = reached as f64 / accepted as f64;
        println!(
            "{name:<22} {reached:>10} {accepted:>10} {:>12.3}",
            ratios[i]
        );
    }

    println!(
        "summary: critical_goodput={:.3} sheddable_goodput={:.3} total_goodput={:.3} server_load_ratio={:.3} bucket_load_ratio={:.3}",
        served.critical_goodput(),
        served.sheddable_goodput(),
        served.total_goodput(),
        ratios[1],
        ratios[2]
    );
    Ok(())
}
