//! Per-request cost of each backstop layer against tower's own layers and a pass-through, over a
//! ready `service_fn` on a current-thread runtime. Every layer adds its row here.
//!
//! Run with `cargo bench --bench overhead`. Compare rows within one run: the ratios are what
//! matter, not the absolute times.

use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::layer::util::Identity;
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

fn leaf() -> impl Service<Request<()>, Response = (), Error = BoxError> + Clone {
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) })
}

/// A request as a server sees it: hyper has already put something in its extensions.
fn request() -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(42u32);
    req
}

/// A request that already carries its caller's deadline (an hour away, so the layer's own
/// timeout binds and the deadline is overwritten in place, as in every layer below the first).
fn request_with_deadline() -> Request<()> {
    let mut req = request();
    req.set_deadline(Deadline::after(Duration::from_secs(3600)));
    req
}

/// Times `iters` sequential ready-and-call round trips inside one `block_on`.
fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<Request<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    run_with(rt, svc, iters, request)
}

fn run_with<S>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    iters: u64,
    make: fn() -> Request<()>,
) -> Duration
where
    S: Service<Request<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..iters {
            let req = make();
            let svc = svc.ready().await.unwrap();
            std::hint::black_box(svc.call(req).await.unwrap());
        }
        start.elapsed()
    })
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let timeout = Duration::from_secs(1);

    let mut group = c.benchmark_group("overhead");
    let passthrough = Identity::new().layer(leaf());
    group.bench_function("passthrough", |b| {
        b.iter_custom(|n| run(&rt, &passthrough, n))
    });
    // The floor for layers that read the clock once per request.
    let clock_read = tower::util::MapRequestLayer::new(|req: Request<()>| {
        std::hint::black_box(tokio::time::Instant::now());
        req
    })
    .layer(leaf());
    group.bench_function("passthrough_plus_clock_read", |b| {
        b.iter_custom(|n| run(&rt, &clock_read, n))
    });
    let tower_timeout = TowerTimeoutLayer::new(timeout).layer(leaf());
    group.bench_function("tower_timeout", |b| {
        b.iter_custom(|n| run(&rt, &tower_timeout, n))
    });
    let backstop_timeout = TimeoutLayer::new(timeout).unwrap().layer(leaf());
    group.bench_function("backstop_timeout", |b| {
        b.iter_custom(|n| run(&rt, &backstop_timeout, n))
    });
    group.bench_function("tower_timeout_with_caller_deadline", |b| {
        b.iter_custom(|n| run_with(&rt, &tower_timeout, n, request_with_deadline))
    });
    group.bench_function("backstop_timeout_with_caller_deadline", |b| {
        b.iter_custom(|n| run_with(&rt, &backstop_timeout, n, request_with_deadline))
    });
    let meter = LittleMeter::builder("bench").build().unwrap();
    let little = LittleLayer::new(meter).layer(leaf());
    group.bench_function("backstop_little", |b| {
        b.iter_custom(|n| run(&rt, &little, n))
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
