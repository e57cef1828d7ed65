//! The hedge layer's fast path (the answer comes before the delay) against `tower::hedge::Hedge`
//! and the bare service, over a ready `service_fn` on a current-thread runtime.
//!
//! Run: `cargo bench --bench hedge`. Both hedge layers are warmed up so they would hedge (they
//! have a delay); on every call they clone the request and the inner service and arm a timer,
//! and the answer arrives at the first poll. backstop also records the latency (a sharded
//! histogram, one `try_lock`) and earns its budget (one atomic); tower records into a
//! mutex-guarded histogram. The `not_idempotent` row is the path for requests never hedged.

use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::hedge::{HedgeLayer, Idempotent};
use criterion::{Criterion, criterion_group, criterion_main};
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

criterion_group!(benches, hedge);
criterion_main!(benches);
