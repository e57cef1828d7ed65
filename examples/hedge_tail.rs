//! Hedged requests against three backends with a latency tail, on tokio's paused clock.
//!
//! For each backend the same open-loop stream of requests (Poisson arrivals, 1,000 a second, one
//! seeded generator) goes through:
//! - `unhedged`: the backend alone;
//! - `backstop`: [`HedgeLayer`] with its defaults (delay = p95 of the last 10–20 s, at least
//!   100 samples, a budget of 5% extra requests);
//! - `tower`: `tower::hedge::Hedge` configured alike (p95, 100 samples, 10 s period), which has
//!   no budget, rounds latencies up to whole milliseconds and returns the first completion;
//! - `backstop pNN, MM% budget`, where tower spent more extra requests than backstop's
//!   defaults: backstop set to tower's measured extra load (percentile 1 − load, budget load + 1
//!   point), to compare the two at the same cost;
//! - for the grpc-java backend, backstop with grpc-java's fixed 1 s delay, on a 5% and a 12%
//!   budget.
//!
//! Columns are for the whole run, then for the requests after the first 12 s: tower's `Hedge`
//! reads only its previous full period (10 s), so it sends no duplicate before then, while
//! backstop's tracker answers after 100 samples.
//!
//! The backend has no queue: every copy takes an independent sample of the backend's latency,
//! so the figures show the hedging policy alone. tokio's timer has 1 ms ticks, so every
//! latency here lands on a whole millisecond: backstop's microsecond tracker cannot show its
//! precision in this run (tower's rounding up to whole milliseconds costs nothing here).
//!
//! Backends:
//! - `bimodal`: uniform 8–12 ms, and 2% of requests take 1 s (the unhedged p99 is 1 s);
//! - `lognormal`: median 10 ms, σ = 1.5 (p99 ≈ 330 ms, p99.9 ≈ 1 s), heavy-tailed (the sim
//!   harness's `LogNormal { cv: 3 }` has about this σ);
//! - `lognormal-heavy`: median 10 ms, σ = 3.5, capped at 100 s (p95 ≈ 3.2 s, p99 ≈ 34 s);
//! - `grpc-java`: the latency injected by grpc-java's hedging example server (1% +10 s,
//!   4% +5 s, 5% +2 s, i.e. 10% at least +2 s, 5% at least +5 s), on a 0.5–1.5 ms base.
//!
//! Run: `cargo run --release --example hedge_tail [requests per run, default 100000]`.
//! The last line is `summary: ...` for the bimodal backend (ratios are unhedged ÷ hedged).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::hedge::{HedgeBucket, HedgeLayer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::{Instant, sleep, sleep_until};
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Bimodal,
    LogNormal,
    /// σ = 3.5: a tail heavy enough that p99 ÷ p95 ≈ 11.
    LogNormalHeavy,
    GrpcJava,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Bimodal => "bimodal",
            Backend::LogNormal => "lognormal",
            Backend::LogNormalHeavy => "lognormal-heavy",
            Backend::GrpcJava => "grpc-java",
        }
    }

    fn sample(self, rng: &mut StdRng) -> Duration {
        match self {
            Backend::Bimodal => {
                if rng.random_bool(0.02) {
                    Duration::from_secs(1)
                } else {
                    Duration::from_micros(rng.random_range(8_000..=12_000))
                }
            }
            Backend::LogNormal => lognormal(rng, 1.5),
            Backend::LogNormalHeavy => lognormal(rng, 3.5),
            Backend::GrpcJava => {
                let base = Duration::from_micros(rng.random_range(500..=1_500));
                let extra = match rng.random_range(0..100) {
                    0 => 10_000,
                    1..=4 => 5_000,
                    5..=9 => 2_000,
                    _ => 0,
                };
                base + Duration::from_millis(extra)
            }
        }
    }
}

/// exp(μ + σ·z), z standard normal by Box–Muller; median e^μ = 10 ms; capped at 100 s.
fn lognormal(rng: &mut StdRng, sigma: f64) -> Duration {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let ms = 10.0 * (sigma * z).exp();
    Duration::from_secs_f64((ms / 1000.0).min(100.0))
}

/// A backend shared by every copy of one run: one seeded generator, one call counter.
#[derive(Clone)]
struct Server {
    backend: Backend,
    rng: Arc<Mutex<StdRng>>,
    calls: Arc<AtomicU64>,
    /// Calls for requests that arrived after the warm-up (ids from [`WARM_UP_IDS`]).
    steady_calls: Arc<AtomicU64>,
}

/// Requests in about the first 12 s (1,000/s): tower's `Hedge` reads only the previous full
/// 10 s period, so it does not hedge before then. Figures "after warm-up" leave these out.
const WARM_UP_IDS: u64 = 12_000;

impl Server {
    fn new(backend: Backend, seed: u64) -> Self {
        Server {
            backend,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            calls: Arc::new(AtomicU64::new(0)),
            steady_calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Service<u64> for Server {
    type Response = u64;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, id: u64) -> Self::Future {
        self.calls.fetch_add(1, Relaxed);
        if id >= WARM_UP_IDS {
            self.steady_calls.fetch_add(1, Relaxed);
        }
        let latency = self.backend.sample(&mut self.rng.lock().unwrap());
        Box::pin(async move {
            sleep(latency).await;
            Ok(id)
        })
    }
}

/// tower's hedge policy for the run: every request may be hedged.
#[derive(Clone)]
struct Always;

impl tower::hedge::Policy<u64> for Always {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }
    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

struct Run {
    label: String,
    /// Every request's latency, sorted.
    all_us: Vec<u64>,
    /// Latencies of the requests after the warm-up, sorted.
    steady_us: Vec<u64>,
    extra_load: f64,
    steady_extra_load: f64,
    note: String,
}

fn pct(sorted: &[u64], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Duration::from_micros(sorted[i - 1])
}

impl Run {
    fn new(label: &str, server: &Server, measured: Vec<(u64, u64)>, note: String) -> Self {
        let requests = measured.len() as f64;
        let steady_requests = measured.iter().filter(|(id, _)| *id >= WARM_UP_IDS).count() as f64;
        let mut all_us: Vec<u64> = measured.iter().map(|(_, us)| *us).collect();
        let mut steady_us: Vec<u64> = measured
            .iter()
            .filter(|(id, _)| *id >= WARM_UP_IDS)
            .map(|(_, us)| *us)
            .collect();
        all_us.sort_unstable();
        steady_us.sort_unstable();
        Run {
            label: label.into(),
            all_us,
            steady_us,
            extra_load: server.calls.load(Relaxed) as f64 / requests - 1.0,
            steady_extra_load: server.steady_calls.load(Relaxed) as f64 / steady_requests - 1.0,
            note,
        }
    }

    fn pct(&self, q: f64) -> Duration {
        pct(&self.all_us, q)
    }

    fn steady_pct(&self, q: f64) -> Duration {
        pct(&self.steady_us, q)
    }
}

/// Sends `requests` Poisson arrivals (1,000/s) through `svc` and measures each one's latency.
async fn drive<S>(mut svc: S, requests: u64, seed: u64) -> Vec<(u64, u64)>
where
    S: Service<u64, Response = u64> + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    let mut arrivals = StdRng::seed_from_u64(seed ^ 0xA5A5);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(requests as usize)));
    let mut next = Instant::now();
    let mut tasks = Vec::with_capacity(requests as usize);
    for id in 0..requests {
        let gap: f64 = -arrivals.random_range(f64::EPSILON..1.0f64).ln() * 1e-3;
        next += Duration::from_secs_f64(gap);
        sleep_until(next).await;
        let start = Instant::now();
        let fut = match svc.ready().await {
            Ok(svc) => svc.call(id),
            Err(_) => panic!("the example's services are always ready"),
        };
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let ok = fut.await.is_ok();
            assert!(ok, "the example's backends never fail");
            let us = start.elapsed().as_micros() as u64;
            latencies.lock().unwrap().push((id, us));
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    std::mem::take(&mut *latencies.lock().unwrap())
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn unhedged(backend: Backend, requests: u64, seed: u64) -> Run {
    let server = Server::new(backend, seed);
    let lat = paused_runtime().block_on(drive(server.clone(), requests, seed));
    Run::new("unhedged", &server, lat, String::new())
}

fn tower_hedge(backend: Backend, requests: u64, seed: u64) -> Run {
    let server = Server::new(backend, seed);
    let rt = paused_runtime();
    let lat = rt.block_on(async {
        let hedge =
            tower::hedge::Hedge::new(server.clone(), Always, 100, 0.95, Duration::from_secs(10));
        drive(hedge, requests, seed).await
    });
    Run::new("tower Hedge p95", &server, lat, "no budget".into())
}

fn backstop_hedge(
    backend: Backend,
    requests: u64,
    seed: u64,
    label: &str,
    configure: impl FnOnce() -> HedgeLayer<
        backstop::classify::ErrorClassifier,
        HedgeBucket,
        backstop::hedge::AnyRequest,
    >,
) -> Run {
    let server = Server::new(backend, seed);
    let rt = paused_runtime();
    let (lat, bucket, delay) = rt.block_on(async {
        let layer = configure();
        let bucket = layer.budget().clone();
        let svc = layer.layer(server.clone());
        let lat = drive(svc, requests, seed).await;
        (lat, bucket, layer.current_delay())
    });
    Run::new(
        label,
        &server,
        lat,
        format!(
            "hedges {} denied {}, delay at end {}",
            bucket.granted(),
            bucket.denied(),
            delay.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        ),
    )
}

fn default_layer()
-> HedgeLayer<backstop::classify::ErrorClassifier, HedgeBucket, backstop::hedge::AnyRequest> {
    HedgeLayer::builder()
        .name("hedge_tail")
        .hedge_any()
        .build()
        .expect("valid")
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn print_table(backend: Backend, runs: &[Run]) {
    let base = &runs[0];
    println!("\n== backend {} ==", backend.name());
    println!(
        "{:<31} {:>7} {:>8} {:>9} {:>6} {:>7} {:>7} | {:>8} {:>9} {:>7}  notes",
        "config (whole run | after 12 s)",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "p99 ÷",
        "p99.9 ÷",
        "extra",
        "p99 ms",
        "p99.9 ms",
        "extra"
    );
    for r in runs {
        println!(
            "{:<31} {:>7} {:>8} {:>9} {:>6.1} {:>7.1} {:>6.2}% | {:>8} {:>9} {:>6.2}%  {}",
            r.label,
            ms(r.pct(0.5)),
            ms(r.pct(0.99)),
            ms(r.pct(0.999)),
            base.pct(0.99).as_secs_f64() / r.pct(0.99).as_secs_f64(),
            base.pct(0.999).as_secs_f64() / r.pct(0.999).as_secs_f64(),
            r.extra_load * 100.0,
            ms(r.steady_pct(0.99)),
            ms(r.steady_pct(0.999)),
            r.steady_extra_load * 100.0,
            r.note
        );
    }
}

fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let seed = 2026;
    println!("hedge_tail: {requests} requests per run, Poisson 1,000/s, seed {seed}, paused clock");

    let mut summary = String::new();
    for backend in [
        Backend::Bimodal,
        Backend::LogNormal,
        Backend::LogNormalHeavy,
        Backend::GrpcJava,
    ] {
        let mut runs = vec![
            unhedged(backend, requests, seed),
            backstop_hedge(
                backend,
                requests,
                seed,
                "backstop p95 (defaults)",
                default_layer,
            ),
            tower_hedge(backend, requests, seed),
        ];
        // backstop at tower's measured extra load (after warm-up): percentile 1 − load, budget
        // load + 1 point, so the two are compared for the same extra requests.
        let tower_load = runs[2].steady_extra_load.max(0.01);
        let percentile = (1.0 - tower_load).clamp(0.5, 0.99);
        if tower_load > runs[1].steady_extra_load + 0.005 {
            runs.push(backstop_hedge(
                backend,
                requests,
                seed,
                &format!(
                    "backstop p{:.0}, {:.0}% budget",
                    percentile * 100.0,
                    (tower_load + 0.01) * 100.0
                ),
                || {
                    HedgeLayer::builder()
                        .hedge_any()
                        .percentile(percentile)
                        .max_extra_load(tower_load + 0.01)
                        .build()
                        .expect("valid")
                },
            ));
        }
        if backend == Backend::GrpcJava {
            for (label, fraction) in [
                ("backstop fixed 1 s, 5% budget", 0.05),
                ("backstop fixed 1 s, 12% budget", 0.12),
            ] {
                runs.push(backstop_hedge(backend, requests, seed, label, || {
                    HedgeLayer::builder()
                        .hedge_any()
                        .fixed_delay(Duration::from_secs(1))
                        .max_extra_load(fraction)
                        .build()
                        .expect("valid")
                }));
            }
        }
        print_table(backend, &runs);
        if backend == Backend::Bimodal {
            let (base, ours, tower) = (&runs[0], &runs[1], &runs[2]);
            summary = format!(
                "summary: p99_ratio={:.1} p999_ratio={:.1} extra_load={:.4} tower_p99_ratio={:.1} tower_extra_load={:.4}",
                base.pct(0.99).as_secs_f64() / ours.pct(0.99).as_secs_f64(),
                base.pct(0.999).as_secs_f64() / ours.pct(0.999).as_secs_f64(),
                ours.extra_load,
                base.pct(0.99).as_secs_f64() / tower.pct(0.99).as_secs_f64(),
                tower.extra_load,
            );
        }
    }
    println!(
        "\ngrpc-java's published figures (up to 3 attempts, 1 s hedging delay): p99 2,002 ms, p99.9 2,011 ms"
    );
    println!("{summary}");
}
