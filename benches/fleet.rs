//! Per-request cost of the fleet quota store (`FleetQuotas`, leases from a real
//! `redis-server` on loopback) against `ClientQuotas` in memory, over the same 1,000 clients.
//!
//! Run: `cargo bench --bench fleet --features redis` (needs `redis-server` on PATH). After
//! criterion's figures, the bench prints the ratio against `ClientQuotas`, measured in the same
//! run (interleaved rounds, median of each), and the Redis round trips per check.

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backstop::fleet::FleetQuotas;
use backstop::throttle::{ClientId, ClientQuotas, Quota, QuotaStore};
use criterion::Criterion;
use redis_server::RedisServer;

const CLIENTS: u64 = 1_000;

/// A quota no benchmark loop reaches, so every check takes the admit path.
fn roomy() -> Quota {
    Quota::per_second(NonZeroU32::MAX)
}

fn keys() -> Vec<ClientId> {
    (0..CLIENTS).map(ClientId::from).collect()
}

fn in_memory() -> ClientQuotas {
    ClientQuotas::builder("bench", roomy()).build().unwrap()
}

fn fleet(url: &str) -> FleetQuotas {
    // Leases sized from the loop's rate, not capped low, as a busy server's would be.
    FleetQuotas::builder("bench", url, roomy())
        .max_lease(1_000_000)
        .build()
        .unwrap()
}

fn time(store: &dyn QuotaStore, keys: &[ClientId], iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let key = &keys[(i % CLIENTS) as usize];
        black_box(store.check(black_box(key)).is_ok());
    }
    start.elapsed()
}

/// The fleet store's lease calls run on tokio tasks: a runtime with one worker runs them while
/// the bench thread checks.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion, url: &str) {
    let keys = keys();
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("fleet");
    let q = in_memory();
    group.bench_function("client_quotas_check", |b| {
        b.iter_custom(|iters| time(&q, &keys, iters))
    });
    let f = fleet(url);
    group.bench_function("fleet_quotas_check", |b| {
        b.iter_custom(|iters| time(&f, &keys, iters))
    });
    group.finish();
}

fn ratios(url: &str) {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 200_000;
    let keys = keys();
    let rt = runtime();
    let _guard = rt.enter();
    let (q, f) = (in_memory(), fleet(url));
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        let times = [time(&q, &keys, ITERS), time(&f, &keys, ITERS)];
        for (s, t) in samples.iter_mut().zip(times) {
            s.push(t.as_nanos() as f64 / ITERS as f64);
        }
    }
    let m: Vec<f64> = samples
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    let s = f.stats();
    let checks = ROUNDS as u64 * ITERS;
    println!(
        "\nper-check time over {CLIENTS} clients, median of {ROUNDS} interleaved rounds of {ITERS}:"
    );
    println!("  client_quotas_check (memory)   {:>7.1} ns", m[0]);
    println!(
        "  fleet_quotas_check (Redis)     {:>7.1} ns  ({:.2}x ClientQuotas)",
        m[1],
        m[1] / m[0]
    );
    println!(
        "  fleet store: {} Redis calls ({} failed) for {checks} checks; {} from leases, {} from the local share",
        s.redis_calls, s.failed_calls, s.admitted_from_lease, s.admitted_from_share
    );
    println!(
        "summary: fleet_vs_client_quotas={:.2} client_quotas_ns={:.1} fleet_ns={:.1} redis_calls_per_check={:.6}",
        m[1] / m[0],
        m[0],
        m[1],
        s.redis_calls as f64 / checks as f64
    );
}

fn main() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &url);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        ratios(&url);
    }
}
