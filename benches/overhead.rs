//! Per-request cost of each backstop layer against tower's own layers and a pass-through, on a
//! current-thread runtime. Every layer adds its row here.
//!
//! Two groups, each with the same rows:
//! - `ready`: the inner service answers at once (its future is ready on the first poll). The
//!   floor: no timer is ever touched, so it shows each layer's bookkeeping alone.
//! - `one_yield`: the inner future is pending once before it answers, as any service doing real
//!   I/O is. A timeout must now arm its timer (and disarm it when the answer comes).
//!
//! Run with `cargo bench --bench overhead`. Compare rows within one run: the ratios are what
//! matter, not the absolute times.

use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::Request;
use tower::layer::util::Identity;
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::util::MapRequestLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

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
fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64, make: fn() -> Request<()>) -> Duration
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

fn row<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    make: fn() -> Request<()>,
) where
    S: Service<Request<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| b.iter_custom(|n| run(rt, &svc, n, make)));
}

/// Every row over one inner service.
fn rows<L>(c: &mut Criterion, rt: &tokio::runtime::Runtime, group: &str, leaf: L)
where
    L: Service<Request<()>, Response = (), Error = BoxError> + Clone,
{
    let timeout = Duration::from_secs(1);
    let mut g = c.benchmark_group(group);
    row(
        &mut g,
        rt,
        "passthrough",
        Identity::new().layer(leaf.clone()),
        request,
    );
    // The floor for layers that read the clock once per request.
    let clock_read = MapRequestLayer::new(|req: Request<()>| {
        std::hint::black_box(tokio::time::Instant::now());
        req
    });
    row(
        &mut g,
        rt,
        "passthrough_plus_clock_read",
        clock_read.layer(leaf.clone()),
        request,
    );
    let tower_timeout = TowerTimeoutLayer::new(timeout).layer(leaf.clone());
    row(&mut g, rt, "tower_timeout", tower_timeout.clone(), request);
    let backstop_timeout = TimeoutLayer::new(timeout).unwrap().layer(leaf.clone());
    row(
        &mut g,
        rt,
        "backstop_timeout",
        backstop_timeout.clone(),
        request,
    );
    let with_deadline = request_with_deadline;
    row(
        &mut g,
        rt,
        "tower_timeout_with_caller_deadline",
        tower_timeout,
        with_deadline,
    );
    row(
        &mut g,
        rt,
        "backstop_timeout_with_caller_deadline",
        backstop_timeout,
        with_deadline,
    );
    let meter = LittleMeter::builder("bench").build().unwrap();
    row(
        &mut g,
        rt,
        "backstop_little",
        LittleLayer::new(meter).layer(leaf),
        request,
    );
    g.finish();
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let ready = service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) });
    rows(c, &rt, "ready", ready);
    let one_yield = service_fn(|_req: Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(())
    });
    rows(c, &rt, "one_yield", one_yield);
}

criterion_group!(benches, overhead);
criterion_main!(benches);
