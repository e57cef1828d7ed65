//! The hedge layer's fast path (the answer comes before the delay) against `tower::hedge::Hedge`
//! and the bare service, over a ready `service_fn` on a current-thread runtime.
//!
//! Run: `cargo bench --bench hedge`. Both hedge layers are warmed up so they would hedge (they
//! have a delay); on every call they clone the request and the inner service and arm a timer,
//! and the answer arrives at the first poll. backstop also records the latency (one atomic add
//! to its window's counter, at the instant the future read) and earns its budget (one atomic);
//! tower records into a mutex-guarded histogram. The `not_idempotent` row is the path for
//! requests never hedged.
//!
//! After criterion's figures, the bench prints the tracker's record against a mutex-guarded
//! hdrhistogram of the same bounds and precision (interleaved rounds, medians): `record_at`
//! (the instant passed in, the hedge layer's path) against the bare histogram, and `record`
//! (which reads tokio's clock) against the histogram plus one clock read.

use std::hint::black_box;
use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::hedge::{HedgeLayer, Idempotent, LatencyTracker};
use criterion::{Criterion, criterion_group};
use http::Request;
use tower::{Layer, Service, ServiceExt, service_fn};

fn leaf() -> impl Service<Request<()>, Response = (), Error = BoxError> + Clone {
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) })
}

fn idempotent() -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(Idempotent);
    req
}

/// A POST without the `Idempotent` marker: never hedged.
fn plain() -> Request<()> {
    Request::post("/").body(()).unwrap()
}

#[derive(Clone)]
struct TowerPolicy;

impl tower::hedge::Policy<Request<()>> for TowerPolicy {
    fn clone_request(&self, req: &Request<()>) -> Option<Request<()>> {
        Some(req.clone())
    }
    fn can_retry(&self, _: &Request<()>) -> bool {
        true
    }
}

/// Times `iters` sequential ready-and-call round trips inside one `block_on`.
fn run<S>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    make: fn() -> Request<()>,
) -> Duration
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let req = make();
            let svc = svc.ready().await.unwrap();
            std::hint::black_box(svc.call(req).await.unwrap());
        }
        start.elapsed()
    })
}

fn hedge(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut group = c.benchmark_group("hedge");
    let mut bare = leaf();
    group.bench_function("passthrough", |b| {
        b.iter_custom(|n| run(&rt, &mut bare, n, idempotent))
    });

    // tower, fed 10 ms latencies so it has a delay from the start.
    let mut tower_hedge = tower::hedge::Hedge::new_with_mock_latencies(
        leaf(),
        TowerPolicy,
        10,
        0.95,
        Duration::from_secs(10),
        &[10; 100],
    );
    group.bench_function("tower_hedge_fast_path", |b| {
        b.iter_custom(|n| run(&rt, &mut tower_hedge, n, idempotent))
    });

    // backstop, warmed up until its tracker answers (then with a 1 ms floor).
    let layer = HedgeLayer::builder("hedge")
        .min_samples(10)
        .build()
        .unwrap();
    let mut backstop_hedge = layer.layer(leaf());
    run(&rt, &mut backstop_hedge, 100, idempotent);
    assert!(layer.current_delay().is_some(), "warmed up");
    group.bench_function("backstop_hedge_fast_path", |b| {
        b.iter_custom(|n| run(&rt, &mut backstop_hedge, n, idempotent))
    });
    group.bench_function("backstop_hedge_not_idempotent", |b| {
        b.iter_custom(|n| run(&rt, &mut backstop_hedge, n, plain))
    });
    group.finish();
}

/// `op` run `iters` times; ns per op.
fn per_op(iters: u64, mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        op(i);
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The tracker's record against a mutex-guarded histogram, interleaved rounds.
fn tracker_ratios() {
    const ROUNDS: usize = 31;
    const ITERS: u64 = 200_000;
    let tracker = LatencyTracker::new();
    let guarded = std::sync::Mutex::new(
        hdrhistogram::Histogram::<u32>::new_with_bounds(1, 100_000_000, 2).unwrap(),
    );
    let now = tokio::time::Instant::now();
    let mut rows: [Vec<f64>; 4] = Default::default();
    for round in 0..ROUNDS {
        let mut timed: [f64; 4] = [0.0; 4];
        let order: [usize; 4] = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for k in order {
            timed[k] = match k {
                0 => per_op(ITERS, |i| {
                    let latency = Duration::from_micros(black_box(12_345 + (i & 7)));
                    tracker.record_at(latency, black_box(now));
                }),
                1 => per_op(ITERS, |i| {
                    let v = black_box(12_345 + (i & 7));
                    guarded.lock().unwrap().saturating_record(v);
                }),
                2 => per_op(ITERS, |i| {
                    tracker.record(Duration::from_micros(black_box(12_345 + (i & 7))));
                }),
                _ => per_op(ITERS, |i| {
                    black_box(tokio::time::Instant::now());
                    let v = black_box(12_345 + (i & 7));
                    guarded.lock().unwrap().saturating_record(v);
                }),
            };
        }
        for (row, t) in rows.iter_mut().zip(timed) {
            row.push(t);
        }
    }
    let [at, mutex, record, mutex_clock] = rows.map(median);
    println!(
        "\ntracker, ns per record (median of {ROUNDS} interleaved rounds of {ITERS}):\n  \
         record_at {at:.1} vs a mutex-guarded histogram {mutex:.1}: {:.2}x\n  \
         record {record:.1} vs the histogram + a clock read {mutex_clock:.1}: {:.2}x",
        at / mutex,
        record / mutex_clock
    );
}

criterion_group!(benches, hedge);

fn main() {
    benches();
    // Only in a real bench run: `cargo test --benches` runs this binary without `--bench`.
    if std::env::args().any(|a| a == "--bench") {
        tracker_ratios();
    }
    Criterion::default().configure_from_args().final_summary();
}
