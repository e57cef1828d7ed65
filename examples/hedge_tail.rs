//! Hedged requests against four backends with a latency tail, on tokio's paused clock.
//!
//! For each backend the same open-loop stream of requests (Poisson arrivals, 1,000 a second, one
//! seeded generator) goes through:
//! - `unhedged`: the backend alone;
//! - `backstop p95 (defaults)`: [`HedgeLayer`] with its defaults (delay = p95 of the last
//!   10–20 s, at least 100 samples; a budget of 5% extra requests with a burst of 500, 5 tokens
//!   at the start; no duplicate while more than 25% of recent requests are late at once);
//! - `tower Hedge p95`: `tower::hedge::Hedge` configured alike (p95, 100 samples, 10 s period),
//!   which has no budget, rounds latencies up to whole milliseconds, leaves cancelled copies
//!   out of its percentile and returns the first completion;
//! - `backstop pNN, MM% budget`, where tower spent more extra requests than backstop's
//!   defaults: backstop set to tower's measured extra load (percentile 1 − load, budget load + 1
//!   point), to compare the two at the same cost;
//! - for `lognormal-heavy`, backstop with a burst of 10 (the bucket's former default), to show
//!   what the burst is for;
//! - for `grpc-java`, backstop with grpc-java's fixed 1 s delay, on a 5% and a 12% budget, and
//!   on the 12% budget with up to 2 extra copies (`max_copies(2)`: a copy at 1 s, another at
//!   2 s; grpc-java's example allows 3 attempts), with the late-share bound at its default
//!   (0.25 for a fixed delay) and at 0.3 (the percentile rule, 1 − 0.9 + 0.2, for a delay at
//!   this backend's p90).
//!
//! Then a fan-out scenario, "The Tail at Scale"'s case: a request completes when all 100 of its
//! calls have answered (100 requests a second, Poisson; each call 10 ms, or 1 s with probability
//! 1%, [`fan_out`] over one hedged service so every call is hedged under one budget), unhedged,
//! with the defaults (one copy per call) and with `max_copies(2)`. With one copy per call a
//! request still waits for a call whose two copies were both slow with probability
//! 1 − (1 − 0.01²)¹⁰⁰ ≈ 1%, so its p99.9 stays 1 s; with two, 1 − (1 − 0.01³)¹⁰⁰ ≈ 0.01%.
//!
//! Columns are for the whole run, then for the requests after the first 12 s: tower's `Hedge`
//! reads only its previous full period (10 s), so it sends no duplicate before then, while
//! backstop's tracker answers after 100 samples. After the measured requests, 20 s more traffic
//! is sent and not measured: a budget earned per request would otherwise be empty for the last
//! measured requests, whose duplicates fall due after the arrivals stop (a real client's traffic
//! does not stop).
//!
//! Below each table: which of the targets the defaults meet (p99 ≥10× and p99.9 ≥5×
//! lower than unhedged, ≤6% extra requests, p99 at least as good as tower's for no more extra
//! load), and the best that one duplicate sent at exactly the p95 could do on this backend,
//! computed from the unhedged latencies: with independent copies, a request sent at 0 and
//! again at d answers after t with P(T > t) = P(X > t) · P(X > t − d). Since P(T > d) =
//! P(X > d) = 5%, the p99 of T is above d = p95: **one hedge at p95 can never cut the p99 by
//! more than p99 ÷ p95 of the backend**. For a lognormal that is e^(σ·(2.326 − 1.645)) =
//! e^(0.681σ), and with a real (lognormal) duplicate 10× needs σ ≥ 3.45. So the σ = 1.5 backend
//! cannot reach 10× at p99 (ceiling 2.8×, 2.28× with a real duplicate; and 4.5× at p99.9,
//! where 5× needs σ ≥ 1.6), and σ = 3.5 is just past the edge (ceiling 10.9×, 10.3× with a
//! real duplicate).
//!
//! The backend has no queue: every copy takes an independent sample of the backend's latency,
//! so the figures show the hedging policy alone. tokio's timer has 1 ms ticks, so every
//! latency here lands on a whole millisecond.
//!
//! Backends:
//! - `bimodal`: uniform 8–12 ms, and 2% of requests take 1 s (the unhedged p99 is 1 s);
//! - `lognormal`: median 10 ms, σ = 1.5 (p99 ≈ 330 ms, p99.9 ≈ 1 s), heavy-tailed (the sim
//!   harness's `LogNormal { cv: 3 }` has about this σ);
//! - `lognormal-heavy`: median 10 ms, σ = 3.5, capped at 100 s (p95 ≈ 3.2 s, p99 ≈ 34 s);
//! - `grpc-java`: the latency injected by grpc-java's hedging example server (1% +10 s,
//!   4% +5 s, 5% +2 s, i.e. 10% at least +2 s, 5% at least +5 s), on a 0.5–1.5 ms base.
//!
//! Run: `cargo run --release --example hedge_tail [requests per run, default 100000] [seed,
//! default 2026]`.
//! The last line is `summary: ...`: the bimodal backend, the primary case, whole-run figures
//! (ratios are unhedged ÷ hedged; the tables above give every backend), then the fan-out's
//! per-request p99.9 ratio (unhedged ÷ two copies per call) and its extra calls (copies ÷
//! calls), and grpc-java's p99.9 with two copies on the 12% budget.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::hedge::{HedgeBucket, HedgeLayer, fan_out};
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
    /// A fan-out's calls: 10 ms, or 1 s with probability 1%.
    FanOut,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Bimodal => "bimodal",
            Backend::LogNormal => "lognormal",
            Backend::LogNormalHeavy => "lognormal-heavy",
            Backend::GrpcJava => "grpc-java",
            Backend::FanOut => "fan-out call",
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
            Backend::FanOut => {
                if rng.random_bool(0.01) {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(10)
                }
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
    /// Requests with this id or more are the cool-down traffic: sent, not measured.
    measured: u64,
}

/// Requests in about the first 12 s (1,000/s): tower's `Hedge` reads only the previous full
/// 10 s period, so it does not hedge before then. Figures "after warm-up" leave these out.
const WARM_UP_IDS: u64 = 12_000;

impl Server {
    fn new(backend: Backend, seed: u64, measured: u64) -> Self {
        Server {
            backend,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            calls: Arc::new(AtomicU64::new(0)),
            steady_calls: Arc::new(AtomicU64::new(0)),
            measured,
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
        if id < self.measured {
            self.calls.fetch_add(1, Relaxed);
        }
        if (WARM_UP_IDS..self.measured).contains(&id) {
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

/// Requests sent after the measured ones (20 s at 1,000/s) and not measured: a hedge budget is
/// earned per request, so without traffic after them the last measured requests (those still
/// running when the arrivals stop, whose duplicates are due after the last arrival) would find it
/// empty; a real client's traffic does not stop.
const COOL_DOWN: u64 = 20_000;

/// Sends `requests` Poisson arrivals (1,000/s) through `svc`, then [`COOL_DOWN`] more, and
/// measures the latency of each of the first `requests`.
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
    for id in 0..requests + COOL_DOWN {
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
            if id < requests {
                let us = start.elapsed().as_micros() as u64;
                latencies.lock().unwrap().push((id, us));
            }
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
    let server = Server::new(backend, seed, requests);
    let lat = paused_runtime().block_on(drive(server.clone(), requests, seed));
    Run::new("unhedged", &server, lat, String::new())
}

fn tower_hedge(backend: Backend, requests: u64, seed: u64) -> Run {
    let server = Server::new(backend, seed, requests);
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
        backstop::classify::DefaultClassifier,
        HedgeBucket,
        backstop::hedge::AnyRequest,
    >,
) -> Run {
    let server = Server::new(backend, seed, requests);
    let rt = paused_runtime();
    let (lat, bucket, delay, stood_down) = rt.block_on(async {
        let layer = configure();
        let bucket = layer.budget().clone();
        let svc = layer.layer(server.clone());
        let lat = drive(svc, requests, seed).await;
        (lat, bucket, layer.current_delay(), layer.stood_down())
    });
    Run::new(
        label,
        &server,
        lat,
        format!(
            "hedges {} refused {} stood down {} (incl. cool-down), delay at end {}",
            bucket.granted(),
            bucket.denied(),
            stood_down,
            delay.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        ),
    )
}

fn default_layer()
-> HedgeLayer<backstop::classify::DefaultClassifier, HedgeBucket, backstop::hedge::AnyRequest> {
    HedgeLayer::builder("hedge_tail")
        .hedge_any()
        .build()
        .expect("valid")
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The fraction of `sorted` latencies (µs) above `t` µs.
fn survival(sorted: &[u64], t: f64) -> f64 {
    if t < 0.0 {
        return 1.0;
    }
    let above = sorted.len() - sorted.partition_point(|&v| (v as f64) <= t);
    above as f64 / sorted.len() as f64
}

/// The `q` quantile of the latency with one independent duplicate sent at exactly the p95 of
/// the unhedged latencies `sorted`, every time: the least t with S(t) · S(t − p95) ≤ 1 − q.
fn ideal(sorted: &[u64], q: f64) -> Duration {
    let d = pct(sorted, 0.95).as_micros() as f64;
    let (mut lo, mut hi) = (0.0f64, *sorted.last().unwrap_or(&0) as f64 + 1.0);
    while hi - lo > 1.0 {
        let mid = (lo + hi) / 2.0;
        if survival(sorted, mid) * survival(sorted, mid - d) > 1.0 - q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Duration::from_micros(hi.ceil() as u64)
}

fn ratio(base: Duration, hedged: Duration) -> f64 {
    base.as_secs_f64() / hedged.as_secs_f64()
}

fn print_table(backend: Backend, runs: &[Run]) {
    let base = &runs[0];
    println!("\n== backend {} ==", backend.name());
    println!(
        "{:<36} {:>7} {:>8} {:>9} {:>6} {:>7} {:>7} | {:>8} {:>9} {:>7}  notes",
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
            "{:<36} {:>7} {:>8} {:>9} {:>6.1} {:>7.1} {:>6.2}% | {:>8} {:>9} {:>6.2}%  {}",
            r.label,
            ms(r.pct(0.5)),
            ms(r.pct(0.99)),
            ms(r.pct(0.999)),
            ratio(base.pct(0.99), r.pct(0.99)),
            ratio(base.pct(0.999), r.pct(0.999)),
            r.extra_load * 100.0,
            ms(r.steady_pct(0.99)),
            ms(r.steady_pct(0.999)),
            r.steady_extra_load * 100.0,
            r.note
        );
    }
}

/// Whether the defaults meet the targets on this backend (whole run), and why not.
fn print_targets(backend: Backend, runs: &[Run]) -> bool {
    let (base, ours, tower) = (&runs[0], &runs[1], &runs[2]);
    let p99 = ratio(base.pct(0.99), ours.pct(0.99));
    let p999 = ratio(base.pct(0.999), ours.pct(0.999));
    let ceiling = ratio(base.pct(0.99), base.pct(0.95));
    let ideal99 = ratio(base.pct(0.99), ideal(&base.all_us, 0.99));
    let ideal999 = ratio(base.pct(0.999), ideal(&base.all_us, 0.999));
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let p99_ok = p99 >= 10.0;
    let p999_ok = p999 >= 5.0;
    let load_ok = ours.extra_load <= 0.06;
    // "At least as good on p99 for no more extra load": a backstop row (the defaults, or set to
    // tower's load) with a p99 no higher than tower's and no more extra requests, over the
    // whole run or after the warm-up.
    let beats = |r: &Run| {
        let whole = r.pct(0.99) <= tower.pct(0.99) && r.extra_load <= tower.extra_load;
        let steady = r.steady_pct(0.99) <= tower.steady_pct(0.99)
            && r.steady_extra_load <= tower.steady_extra_load;
        match (whole, steady) {
            (true, true) => Some("whole run and after 12 s"),
            (true, false) => Some("whole run"),
            (false, true) => Some("after 12 s"),
            (false, false) => None,
        }
    };
    let matched = runs
        .iter()
        .skip(3)
        .find(|r| r.label.starts_with("backstop p") && r.label.contains("budget"));
    let vs_tower = beats(ours)
        .map(|w| format!("met by the defaults ({w})"))
        .or_else(|| {
            matched.and_then(|m| {
                beats(m).map(|w| format!("met at tower's load by `{}` ({w})", m.label))
            })
        });
    println!(
        "targets (defaults, whole run): p99 ÷{p99:.1} ≥10: {}; p99.9 ÷{p999:.1} ≥5: {}; extra {:.2}% ≤6%: {}",
        mark(p99_ok),
        mark(p999_ok),
        ours.extra_load * 100.0,
        mark(load_ok),
    );
    println!(
        "vs tower (p99 at least as good for no more extra load): {}",
        vs_tower.as_deref().unwrap_or("NOT met")
    );
    println!(
        "one duplicate at exactly the p95 ({} ms), from the unhedged latencies: p99 ÷{ideal99:.1}, p99.9 ÷{ideal999:.1}; \
         p99 ÷ p95 of the backend (the p99 cut's ceiling): {ceiling:.1}",
        ms(base.pct(0.95)),
    );
    let why = match backend {
        Backend::Bimodal => {
            "the 2% at 1 s are far above the p95 (12 ms): a duplicate at 12 ms answers in 8–12 ms."
        }
        Backend::LogNormal => {
            "σ = 1.5 is not heavy enough for these targets with one hedge at p95. The p99 of the \
             hedged latency stays above the delay, so its cut is at most p99 ÷ p95 = e^(0.681σ) = \
             2.8×, and a real duplicate (itself lognormal) gives 2.28× in theory; 10× needs \
             σ ≥ 3.45. At p99.9 one duplicate at the exact p95 gives 4.5× in theory (5× needs \
             σ ≥ 1.6). Hedging earlier (a lower percentile, a larger budget: the row at tower's \
             load) is what cuts it more."
        }
        Backend::LogNormalHeavy => {
            "σ = 3.5 is just past the edge for p99: in theory its ceiling is 10.9× and one \
             duplicate at the exact p95 gives 10.3× (10× needs σ ≥ 3.45), so the target takes a \
             delay that tracks the p95 closely and a budget that does not refuse: the burst-10 row \
             misses it, and the defaults, whose bucket starts with 5 tokens (not 500, which a burst \
             against a full server could spend at once), refuse hedges in the first seconds, while \
             the tracked delay is still too short: those slow requests stay in the whole run's \
             tail (p99 just under 10×, p99.9 about 5× where a 500-token start gave 11.7× for 0.45 \
             point more extra load; after 12 s the p99.9 is about 9× lower than unhedged)."
        }
        Backend::FanOut => "",
        Backend::GrpcJava => {
            "10% of requests take 2 s more and exactly 5% take 5 s or more, so the p95 sits on \
             the cliff between the 2 s and the 5 s groups: the tracked delay flips between ~2 s \
             and ~5 s, and while it is at 5 s the 5 s group is not helped, so the defaults' p99 \
             stays 5 s (hedging a little earlier, p93.5, gives 2,004 ms). Even at best, hedging \
             at p95 only moves the p99 from 5 s to ~2 s (÷2.5). With one duplicate, a request \
             whose duplicate also lands in a slow group stays slow: 5% × 5% of requests take 5 s \
             even with a 1 s delay, so the p99.9 stays 5,002 ms where grpc-java's up to 3 \
             attempts reach 2,011 ms; with 2 copies (a copy at 1 s, another at 2 s) a request stays \
             past 2 s only when all three land in slow groups (5% × 10% × 10% = 0.05%), under \
             the 0.1% a p99.9 allows. That needs the late-share bound above the share a 1 s delay \
             leaves late (10%) by a margin: at the default 0.25 for fixed delays it stands down for \
             a few percent of late requests, which stay in the p99.9; 0.3 is the percentile rule's \
             margin (1 − 0.9 + 0.2)."
        }
    };
    println!("why: {why}");
    p99_ok && p999_ok && load_ok && vs_tower.is_some()
}

/// Fan-out requests a second (Poisson) and calls per request.
const FANOUT_RATE: f64 = 100.0;
const FANOUT_CALLS: u64 = 100;
/// Fan-out requests sent after the measured ones and not measured (2 s), as [`COOL_DOWN`].
const FANOUT_COOL_DOWN: u64 = 200;

/// Sends `requests` fan-out requests (Poisson, [`FANOUT_RATE`] a second) through `svc`, each
/// waiting for [`FANOUT_CALLS`] calls, then [`FANOUT_COOL_DOWN`] more; returns each measured
/// request's latency (µs), sorted.
async fn drive_fanout<S>(svc: S, requests: u64, seed: u64) -> Vec<u64>
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    let mut arrivals = StdRng::seed_from_u64(seed ^ 0x5A5A);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(requests as usize)));
    let mut next = Instant::now();
    let mut tasks = Vec::with_capacity(requests as usize);
    for request in 0..requests + FANOUT_COOL_DOWN {
        let gap: f64 = -arrivals.random_range(f64::EPSILON..1.0f64).ln() / FANOUT_RATE;
        next += Duration::from_secs_f64(gap);
        sleep_until(next).await;
        let start = Instant::now();
        let ids = request * FANOUT_CALLS..(request + 1) * FANOUT_CALLS;
        let all = fan_out(&svc, ids);
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let answers = all.await.expect("the example's backends never fail");
            assert_eq!(answers.len() as u64, FANOUT_CALLS);
            if request < requests {
                let us = start.elapsed().as_micros() as u64;
                latencies.lock().unwrap().push(us);
            }
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort_unstable();
    all
}

/// One fan-out run: the per-request latencies (µs, sorted), the extra calls (copies ÷ calls)
/// and a note.
struct FanRun {
    label: String,
    request_us: Vec<u64>,
    extra_load: f64,
    note: String,
}

fn fanout_run(requests: u64, seed: u64, copies: Option<usize>) -> FanRun {
    let server = Server::new(Backend::FanOut, seed, requests * FANOUT_CALLS);
    let rt = paused_runtime();
    let (request_us, note) = rt.block_on(async {
        match copies {
            None => (
                drive_fanout(server.clone(), requests, seed).await,
                String::new(),
            ),
            Some(k) => {
                let layer = HedgeLayer::builder("fan_out")
                    .hedge_any()
                    .max_copies(k)
                    .build()
                    .expect("valid");
                let lat = drive_fanout(layer.layer(server.clone()), requests, seed).await;
                let bucket = layer.budget();
                let note = format!(
                    "copies {} refused {} stood down {} (incl. cool-down), delay at end {}",
                    bucket.granted(),
                    bucket.denied(),
                    layer.stood_down(),
                    layer
                        .current_delay()
                        .map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
                );
                (lat, note)
            }
        }
    });
    let calls = (requests * FANOUT_CALLS) as f64;
    FanRun {
        label: match copies {
            None => "unhedged".into(),
            Some(1) => "backstop p95 (defaults, 1 copy)".into(),
            Some(k) => format!("backstop p95, {k} copies"),
        },
        request_us,
        extra_load: server.calls.load(Relaxed) as f64 / calls - 1.0,
        note,
    }
}

/// The fan-out table; returns (unhedged ÷ 2 copies p99.9, 2 copies' extra calls, targets met).
fn fanout_table(requests: u64, seed: u64) -> (f64, f64, bool) {
    let runs = [
        fanout_run(requests, seed, None),
        fanout_run(requests, seed, Some(1)),
        fanout_run(requests, seed, Some(2)),
    ];
    println!(
        "\n== fan-out: {requests} requests × {FANOUT_CALLS} calls (10 ms, 1% at 1 s), {FANOUT_RATE}/s =="
    );
    println!(
        "{:<34} {:>7} {:>8} {:>9} {:>6} {:>7} {:>7}  notes",
        "config (per request)", "p50 ms", "p99 ms", "p99.9 ms", "p99 ÷", "p99.9 ÷", "extra"
    );
    let base = &runs[0];
    for r in &runs {
        let (p50, p99, p999) = (
            pct(&r.request_us, 0.5),
            pct(&r.request_us, 0.99),
            pct(&r.request_us, 0.999),
        );
        println!(
            "{:<34} {:>7} {:>8} {:>9} {:>6.1} {:>7.1} {:>6.2}%  {}",
            r.label,
            ms(p50),
            ms(p99),
            ms(p999),
            ratio(pct(&base.request_us, 0.99), p99),
            ratio(pct(&base.request_us, 0.999), p999),
            r.extra_load * 100.0,
            r.note
        );
    }
    let two = &runs[2];
    let cut = ratio(pct(&base.request_us, 0.999), pct(&two.request_us, 0.999));
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets (2 copies, whole run): p99.9 ÷{cut:.1} ≥10: {}; extra calls {:.2}% ≤3%: {}",
        mark(cut >= 10.0),
        two.extra_load * 100.0,
        mark(two.extra_load <= 0.03)
    );
    println!(
        "why: a request waits for its slowest call; with one copy per call, 1 − (1 − 0.01²)^100 = 1.0% \
         of requests keep a call whose two copies were both slow, more than the 0.1% a p99.9 allows; \
         with two, 1 − (1 − 0.01³)^100 = 0.01%. The copies cost what the slow calls are (1%): \
         each copy goes out only for a call still running at the p95."
    );
    (cut, two.extra_load, cut >= 10.0 && two.extra_load <= 0.03)
}

fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2026);
    println!(
        "hedge_tail: {requests} requests per run (+{COOL_DOWN} not measured), Poisson 1,000/s, seed {seed}, paused clock"
    );

    let mut summary = String::new();
    let mut verdicts = Vec::new();
    let mut grpc_java_p999 = Duration::ZERO;
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
        // backstop at tower's measured extra load (whole run): percentile 1 − load, budget the
        // same, so the two are compared for the same extra requests.
        let tower_load = runs[2].extra_load.max(0.01);
        let percentile = (1.0 - tower_load).clamp(0.5, 0.99);
        if tower_load > runs[1].extra_load + 0.005 {
            runs.push(backstop_hedge(
                backend,
                requests,
                seed,
                &format!(
                    "backstop p{:.1}, {:.1}% budget",
                    percentile * 100.0,
                    tower_load * 100.0
                ),
                || {
                    HedgeLayer::builder("hedge")
                        .hedge_any()
                        .percentile(percentile)
                        .max_extra_load(tower_load)
                        .build()
                        .expect("valid")
                },
            ));
        }
        if backend == Backend::LogNormalHeavy {
            runs.push(backstop_hedge(
                backend,
                requests,
                seed,
                "backstop p95, burst 10",
                || {
                    HedgeLayer::builder("hedge")
                        .hedge_any()
                        .burst(10.0)
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
                    HedgeLayer::builder("hedge")
                        .hedge_any()
                        .fixed_delay(Duration::from_secs(1))
                        .max_extra_load(fraction)
                        .build()
                        .expect("valid")
                }));
            }
            // Two copies, with the late-share bound at its default for a fixed delay (0.25),
            // then at the rule the percentile delays use, 1 − quantile + 0.2: a 1 s delay is
            // this backend's p90, so 0.3. At 0.25 the share of a backend where 10% of requests
            // are late crosses the bound by chance often enough to stand down for several
            // percent of the late requests, and those stay in the p99.9.
            for (label, share) in [
                ("backstop 1 s, 12%, 2 copies", None),
                ("backstop 1 s, 12%, 2 copies, ≤0.3", Some(0.3)),
            ] {
                runs.push(backstop_hedge(backend, requests, seed, label, || {
                    let builder = HedgeLayer::builder("hedge")
                        .hedge_any()
                        .fixed_delay(Duration::from_secs(1))
                        .max_extra_load(0.12)
                        .max_copies(2);
                    match share {
                        Some(share) => builder.max_late_share(share),
                        None => builder,
                    }
                    .build()
                    .expect("valid")
                }));
            }
        }
        print_table(backend, &runs);
        verdicts.push((backend.name(), print_targets(backend, &runs)));
        if backend == Backend::GrpcJava {
            println!(
                "grpc-java's published figures (up to 3 attempts, 1 s hedging delay): p99 2,002 ms, p99.9 2,011 ms"
            );
            let two = runs.last().expect("the 2-copy run");
            grpc_java_p999 = two.pct(0.999);
            let ok = grpc_java_p999 <= Duration::from_millis(2_200) && two.extra_load <= 0.12;
            println!(
                "target (2 copies, 12% budget, late share ≤ 0.3, whole run): p99.9 {} ms ≤2,200 within 12% extra ({:.2}%): {}",
                ms(grpc_java_p999),
                two.extra_load * 100.0,
                if ok { "met" } else { "NOT met" }
            );
            verdicts.push(("grpc-java, 2 copies", ok));
        }
        if backend == Backend::Bimodal {
            let (base, ours, tower) = (&runs[0], &runs[1], &runs[2]);
            summary = format!(
                "summary: p99_ratio={:.1} p999_ratio={:.1} extra_load={:.4} tower_p99_ratio={:.1} tower_extra_load={:.4}",
                ratio(base.pct(0.99), ours.pct(0.99)),
                ratio(base.pct(0.999), ours.pct(0.999)),
                ours.extra_load,
                ratio(base.pct(0.99), tower.pct(0.99)),
                tower.extra_load,
            );
        }
    }
    let (fanout_cut, fanout_extra, fanout_ok) = fanout_table((requests / 10).max(100), seed);
    verdicts.push(("fan-out", fanout_ok));
    summary.push_str(&format!(
        " fanout_p999_ratio={fanout_cut:.1} fanout_extra_load={fanout_extra:.4} grpc_java_p999_ms={}",
        grpc_java_p999.as_millis()
    ));
    println!();
    for (name, ok) in verdicts {
        println!(
            "{:<20} {}",
            name,
            if ok {
                "all targets met"
            } else {
                "NOT all targets met (see above)"
            }
        );
    }
    println!("{summary}");
}
