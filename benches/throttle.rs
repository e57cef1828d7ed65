//! Cost of the throttle's decisions: the keyed quota check of `ClientQuotas` against governor's
//! own keyed limiter (DashMap store, quanta clock) over the same 1,000 clients, the whole-client
//! shed test, and the whole layer against a pass-through.
//!
//! Run: `cargo bench --bench throttle`. After criterion's figures, the bench prints ratios
//! against governor alone, measured in the same run (interleaved rounds, median of each).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::throttle::{ClientId, ClientQuotas, Quota, ShedFraction, ThrottleLayer};
use criterion::{Criterion, criterion_group};
use governor::RateLimiter;
use tower::{Layer, Service, ServiceExt, service_fn};

const CLIENTS: u64 = 1_000;

/// A quota no benchmark loop reaches, so every check takes the admit path.
fn roomy() -> Quota {
    Quota::per_second(NonZeroU32::MAX)
}

fn keys() -> Vec<ClientId> {
    (0..CLIENTS).map(ClientId::from).collect()
}

fn quotas() -> ClientQuotas {
    ClientQuotas::builder("bench", roomy()).build().unwrap()
}

fn shed_nobody() -> ShedFraction {
    ShedFraction::builder("bench").build().unwrap()
}

fn shed() -> ShedFraction {
    // 1e-9: nobody is shed, but the hash is computed.
    ShedFraction::builder("bench")
        .initial(1e-9)
        .build()
        .unwrap()
}

type Governor = governor::DefaultKeyedRateLimiter<ClientId>;

fn governor_alone() -> Governor {
    RateLimiter::keyed(roomy())
}

fn time_governor(limiter: &Governor, keys: &[ClientId], iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let key = &keys[(i % CLIENTS) as usize];
        black_box(limiter.check_key(black_box(key)).is_ok());
    }
    start.elapsed()
}

fn time_quotas(quotas: &ClientQuotas, keys: &[ClientId], iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let key = &keys[(i % CLIENTS) as usize];
        black_box(quotas.check(black_box(key)).is_ok());
    }
    start.elapsed()
}

fn time_shed(shed: &ShedFraction, keys: &[ClientId], iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let key = &keys[(i % CLIENTS) as usize];
        black_box(shed.is_shed(black_box(key)));
    }
    start.elapsed()
}

fn handler() -> impl Service<u64, Response = u64, Error = BoxError> + Clone {
    service_fn(|x: u64| async move { Ok::<_, BoxError>(x.wrapping_add(1)) })
}

/// Times `iters` sequential requests through `svc`, from client `i % CLIENTS`.
async fn drive<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(i % CLIENTS))
            .await
            .unwrap();
        black_box(out);
    }
    start.elapsed()
}

fn layer() -> ThrottleLayer<fn(&u64) -> Option<ClientId>> {
    let key: fn(&u64) -> Option<ClientId> = |c| Some(ClientId::from(*c));
    ThrottleLayer::builder("throttle", key)
        .shed(shed())
        .quotas(quotas())
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("throttle");
    let limiter = governor_alone();
    group.bench_function("governor_keyed_check", |b| {
        b.iter_custom(|iters| time_governor(&limiter, &keys, iters))
    });
    let q = quotas();
    group.bench_function("client_quotas_check", |b| {
        b.iter_custom(|iters| time_quotas(&q, &keys, iters))
    });
    let s = shed();
    group.bench_function("shed_fraction_is_shed", |b| {
        b.iter_custom(|iters| time_shed(&s, &keys, iters))
    });
    let s0 = shed_nobody();
    group.bench_function("shed_fraction_is_shed_p0", |b| {
        b.iter_custom(|iters| time_shed(&s0, &keys, iters))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    group.bench_function("pass_through", |b| {
        b.to_async(&rt).iter_custom(|iters| drive(handler(), iters))
    });
    let l = layer();
    group.bench_function("throttle_layer", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(l.layer(handler()), iters))
    });
    group.finish();
}

/// Interleaved rounds of every variant; the median per-check time of each, and its ratio to
/// governor's keyed limiter alone.
fn ratios() {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 200_000;
    let keys = keys();
    let (limiter, q, s, l) = (governor_alone(), quotas(), shed(), layer());
    let s0 = shed_nobody();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let names = [
        "governor_keyed_check",
        "client_quotas_check",
        "shed_fraction_is_shed",
        "shed_fraction_is_shed_p0",
        "pass_through (service)",
        "throttle_layer (service)",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..ROUNDS {
        let times = [
            time_governor(&limiter, &keys, ITERS),
            time_quotas(&q, &keys, ITERS),
            time_shed(&s, &keys, ITERS),
            time_shed(&s0, &keys, ITERS),
            rt.block_on(drive(handler(), ITERS)),
            rt.block_on(drive(l.layer(handler()), ITERS)),
        ];
        for (s, t) in samples.iter_mut().zip(times) {
            s.push(t.as_nanos() as f64 / ITERS as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = samples.iter_mut().map(median).collect();
    println!(
        "\nper-check time over {CLIENTS} clients, median of {ROUNDS} interleaved rounds of {ITERS}:"
    );
    for (name, v) in names.iter().zip(&m) {
        println!(
            "  {name:<26} {v:>7.1} ns  ({:.2}x governor alone)",
            v / m[0]
        );
    }
    println!(
        "summary: quotas_vs_governor={:.2} governor_ns={:.1} quotas_ns={:.1} shed_ns={:.1} shed_p0_ns={:.1} layer_overhead_ns={:.1}",
        m[1] / m[0],
        m[0],
        m[1],
        m[2],
        m[3],
        m[5] - m[4]
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
