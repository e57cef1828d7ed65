//! Uncontended per-request overhead of the queueing layers: BackpressureLayer and
//! LifoQueueLayer against tower's ConcurrencyLimit and a pass-through, over a ready
//! `service_fn` on a current-thread runtime. Each iteration is `ready().await` + `call().await`
//! with the limit never reached, so this is the fast path: one compare-and-swap to admit, one
//! `fetch_sub` to release, no lock.
//!
//! Run: `cargo bench --bench queue`. After criterion's figures, the bench prints ratios against
//! tower's ConcurrencyLimit measured in the same run (interleaved rounds, median of each).

use std::hint::black_box;
use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::backpressure::BackpressureLayer;
use backstop::lifo_queue::LifoQueueLayer;
use criterion::{Criterion, criterion_group};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

const LIMIT: usize = 1024;

fn handler() -> impl Service<u64, Response = u64, Error = BoxError> + Clone {
    service_fn(|x: u64| async move { Ok::<_, BoxError>(x.wrapping_add(1)) })
}

/// Times `iters` sequential requests through `svc`.
async fn drive<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let out = svc.ready().await.unwrap().call(black_box(i)).await.unwrap();
        black_box(out);
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("queue_overhead");
    group.bench_function("pass_through", |b| {
        b.to_async(&rt).iter_custom(|iters| drive(handler(), iters))
    });
    group.bench_function("tower_concurrency_limit", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(ConcurrencyLimitLayer::new(LIMIT).layer(handler()), iters))
    });
    group.bench_function("backpressure", |b| {
        let layer = BackpressureLayer::new("backpressure", LIMIT, 0).unwrap();
        b.to_async(&rt)
            .iter_custom(|iters| drive(layer.layer(handler()), iters))
    });
    group.bench_function("lifo_queue", |b| {
        let layer = LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(LIMIT)
            .ignore_deadlines()
            .build()
            .unwrap();
        b.to_async(&rt)
            .iter_custom(|iters| drive(layer.layer(handler()), iters))
    });
    group.finish();
}

/// Interleaved rounds of every variant, so drift in machine load hits all of them alike; the
/// median per-request time of each, and its ratio to tower's ConcurrencyLimit.
fn ratios() {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 200_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let backpressure = BackpressureLayer::new("backpressure", LIMIT, 0).unwrap();
    let lifo = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(LIMIT)
        .ignore_deadlines()
        .build()
        .unwrap();
    let names = [
        "pass_through",
        "tower_concurrency_limit",
        "backpressure",
        "lifo_queue",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..ROUNDS {
        let times = rt.block_on(async {
            [
                drive(handler(), ITERS).await,
                drive(ConcurrencyLimitLayer::new(LIMIT).layer(handler()), ITERS).await,
                drive(backpressure.layer(handler()), ITERS).await,
                drive(lifo.layer(handler()), ITERS).await,
            ]
        });
        for (s, t) in samples.iter_mut().zip(times) {
            s.push(t.as_nanos() as f64 / ITERS as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    println!("\nper-request overhead, median of {ROUNDS} interleaved rounds of {ITERS}:");
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "  {name:<24} {m:>7.1} ns  ({:.2}x tower ConcurrencyLimit)",
            m / medians[1]
        );
    }
    println!(
        "summary: backpressure_vs_tower={:.2} lifo_vs_tower={:.2} backpressure_ns={:.1} lifo_ns={:.1} tower_ns={:.1} pass_through_ns={:.1}",
        medians[2] / medians[1],
        medians[3] / medians[1],
        medians[2],
        medians[3],
        medians[1],
        medians[0]
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only in a real bench run: `cargo test --benches` runs this binary without `--bench`.
    if std::env::args().any(|a| a == "--bench") {
        ratios();
    }
}
