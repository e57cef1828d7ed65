//! The retry layer's success path against `tower::retry` with `TpsBudget`, over a ready
//! `service_fn` on a current-thread runtime, with the bare service as the baseline.
//!
//! Run: `cargo bench --bench retry`. Both retry layers clone the request (and the inner service)
//! on every call, since either may need a retry; on success, backstop deposits into its
//! `RetryBudget` (one atomic load at the cap) and tower into its `TpsBudget` (a mutex for the
//! window rotation and atomic adds).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::retry::{RetryBudget, RetryLayer, RetryRequest};
use backstop::timeout::{Deadline, HasDeadline};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
struct Req(u64);

impl HasDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        None
    }
    fn set_deadline(&mut self, _: Deadline) {}
}

impl RetryRequest for Req {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// tower's documented budget policy: deposit on success, withdraw before a retry.
#[derive(Clone)]
struct TowerPolicy(Arc<TpsBudget>);

impl tower::retry::Policy<Req, u64, BoxError> for TowerPolicy {
    type Future = std::future::Ready<()>;
    fn retry(&mut self, _: &mut Req, result: &mut Result<u64, BoxError>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| std::future::ready(())),
        }
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn ready_service() -> impl Service<Req, Response = u64, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|req: Req| async move { Ok::<_, BoxError>(black_box(req.0)) })
}

/// Times `iters` calls through `svc`, each waiting for readiness first.
async fn drive<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<Req, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let out = svc.ready().await.unwrap().call(Req(i)).await.unwrap();
        black_box(out);
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_success_path");

    group.bench_function("baseline_service_fn", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(ready_service(), iters))
    });

    let budget = RetryBudget::builder("bench").build().unwrap();
    let backstop = RetryLayer::new(budget).layer(ready_service());
    group.bench_function("backstop_retry_budget", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(backstop.clone(), iters))
    });

    let tower = tower::retry::RetryLayer::new(TowerPolicy(Arc::new(TpsBudget::default())))
        .layer(ready_service());
    group.bench_function("tower_retry_tps_budget", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(tower.clone(), iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
