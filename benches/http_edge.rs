//! Cost of `backstop::http::ErrorToResponseLayer` per request: on the success path against the
//! bare handler and against the README's former edge, tower's `map_result` with
//! `overload_to_response`; on a refusal (answered 429) against that same `map_result`.
//!
//! Run: `cargo bench --bench http_edge`. After criterion's figures, the bench prints ratios
//! measured in the same run (interleaved rounds, median of each). Requests are built outside
//! the timed loops.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use backstop::http::ErrorToResponseLayer;
use backstop::http::overload_to_response;
use backstop::{BoxError, OverloadReason, Overloaded};
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

type Req = Request<String>;

fn ok_handler() -> impl Service<Req, Response = Response<String>, Error = BoxError> + Clone {
    service_fn(|_req: Req| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn refusing_handler() -> impl Service<Req, Response = Response<String>, Error = BoxError> + Clone {
    service_fn(|_req: Req| async {
        Err::<Response<String>, _>(BoxError::from(Overloaded::new(OverloadReason::Throttled)))
    })
}

fn requests(n: u64) -> Vec<Req> {
    (0..n).map(|_| Request::new(String::new())).collect()
}

/// Times one request through `svc` for each of `reqs`, checking the status.
async fn drive<S, B, E>(mut svc: S, reqs: Vec<Req>, status: u16) -> Duration
where
    S: Service<Req, Response = Response<B>, Error = E>,
    E: std::fmt::Debug,
{
    let start = Instant::now();
    for req in reqs {
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), status);
        black_box(res);
    }
    start.elapsed()
}

/// Times `iters` requests of one variant on a runtime.
type Run = Box<dyn Fn(&tokio::runtime::Runtime, u64) -> Duration>;

/// The variants, by name.
fn variants() -> Vec<(&'static str, Run)> {
    vec![
        (
            "handler_alone",
            Box::new(|rt, n| rt.block_on(drive(ok_handler(), requests(n), 200))),
        ),
        (
            "map_result_success",
            Box::new(|rt, n| {
                let svc = ServiceBuilder::new()
                    .map_result(overload_to_response)
                    .service(ok_handler());
                rt.block_on(drive(svc, requests(n), 200))
            }),
        ),
        (
            "error_to_response_success",
            Box::new(|rt, n| {
                let svc = ErrorToResponseLayer::new().layer(ok_handler());
                rt.block_on(drive::<_, _, Infallible>(svc, requests(n), 200))
            }),
        ),
        (
            "map_result_refusal_429",
            Box::new(|rt, n| {
                let svc = ServiceBuilder::new()
                    .map_result(overload_to_response)
                    .service(refusing_handler());
                rt.block_on(drive(svc, requests(n), 429))
            }),
        ),
        (
            "error_to_response_refusal_429",
            Box::new(|rt, n| {
                let svc = ErrorToResponseLayer::new().layer(refusing_handler());
                rt.block_on(drive::<_, _, Infallible>(svc, requests(n), 429))
            }),
        ),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("http_edge");
    for (name, run) in variants() {
        // The requests of each batch are built before its clock starts (inside `run`).
        group.bench_function(name, |b| b.iter_custom(|iters| run(&rt, iters)));
    }
    group.finish();
}

/// Interleaved rounds of every variant; the median per-request time of each, and the ratios
/// the README quotes.
fn ratios() {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 100_000;
    let rt = runtime();
    let variants = variants();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for ((_, run), s) in variants.iter().zip(samples.iter_mut()) {
            s.push(run(&rt, ITERS).as_nanos() as f64 / ITERS as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = samples.iter_mut().map(median).collect();
    println!("\nper-request time, median of {ROUNDS} interleaved rounds of {ITERS}:");
    for ((name, _), v) in variants.iter().zip(&m) {
        println!("  {name:<30} {v:>7.1} ns");
    }
    println!(
        "summary: success_vs_handler={:.2} success_vs_map_result={:.2} refusal_vs_map_result={:.2}",
        m[2] / m[0],
        m[2] / m[1],
        m[4] / m[3]
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
