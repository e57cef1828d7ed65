//! `TokenBucket::try_acquire` against governor's direct `RateLimiter::check`, with the same
//! quota (10⁹ per second, burst 10⁶: every check is granted, so this is the grant path), on 1
//! thread and on 2 threads hammering one shared limiter.
//!
//! Every check reads a clock. backstop reads `tokio::time::Instant` (so paused-time tests
//! work), which is the OS monotonic clock; governor's default clock is `quanta` (the CPU's TSC).
//! Where the OS clock is slow (virtual machines), that read is most of the cost, so the bench
//! also runs governor on the OS clock (`MonotonicClock`) and times one clock read alone.
//!
//! Run: `cargo bench --bench token_bucket`. After criterion's figures, the bench prints ratios
//! against governor measured in the same run (interleaved rounds, median of each).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backstop::token_bucket::TokenBucket;
use criterion::{Criterion, criterion_group};
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const RATE: u32 = 1_000_000_000;
const BURST: u32 = 1_000_000;

fn bucket() -> TokenBucket {
    TokenBucket::new("bench", f64::from(BURST), f64::from(RATE)).unwrap()
}

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).unwrap()).allow_burst(NonZeroU32::new(BURST).unwrap())
}

fn governor() -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota())
}

type OsClockLimiter =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

fn governor_os_clock() -> OsClockLimiter {
    RateLimiter::direct_with_clock(quota(), MonotonicClock)
}

/// Runs `check` `iters` times on each of `threads` threads at once; the time per check per
/// thread (wall time of the slowest thread divided by `iters`).
fn hammer<F: Fn() -> bool + Sync>(threads: usize, iters: u64, check: F) -> Duration {
    let check = &check;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let start = Instant::now();
                    let mut granted = 0u64;
                    for _ in 0..iters {
                        granted += u64::from(black_box(check()));
                    }
                    black_box(granted);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("token_bucket");
    for threads in [1, 2] {
        group.bench_function(format!("backstop_try_acquire_{threads}t"), |b| {
            let bucket = bucket();
            b.iter_custom(|iters| hammer(threads, iters, || bucket.try_acquire(1)))
        });
        group.bench_function(format!("governor_check_{threads}t"), |b| {
            let limiter = governor();
            b.iter_custom(|iters| hammer(threads, iters, || limiter.check().is_ok()))
        });
        group.bench_function(format!("governor_os_clock_check_{threads}t"), |b| {
            let limiter = governor_os_clock();
            b.iter_custom(|iters| hammer(threads, iters, || limiter.check().is_ok()))
        });
    }
    group.finish();
}

/// Interleaved rounds of every variant, so drift in machine load hits all of them alike; the
/// median time per check and the ratio backstop / governor.
fn ratios() {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 1_000_000;
    let per_check = |d: Duration| d.as_nanos() as f64 / ITERS as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for threads in [1usize, 2] {
        let (mut ours, mut theirs, mut theirs_os, mut clock) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let bucket = bucket();
            let limiter = governor();
            let os = governor_os_clock();
            ours.push(per_check(hammer(threads, ITERS, || bucket.try_acquire(1))));
            theirs.push(per_check(hammer(threads, ITERS, || {
                limiter.check().is_ok()
            })));
            theirs_os.push(per_check(hammer(threads, ITERS, || os.check().is_ok())));
            clock.push(per_check(hammer(threads, ITERS, || {
                black_box(tokio::time::Instant::now());
                true
            })));
        }
        rows.push((
            threads,
            median(&mut ours),
            median(&mut theirs),
            median(&mut theirs_os),
            median(&mut clock),
        ));
    }
    println!("\ntime per check, median of {ROUNDS} interleaved rounds of {ITERS} per thread:");
    for (threads, ours, theirs, theirs_os, clock) in &rows {
        println!(
            "  {threads} thread(s): backstop {ours:>6.1} ns | governor (quanta) {theirs:>6.1} ns ({:.2}x) | governor (OS clock) {theirs_os:>6.1} ns ({:.2}x) | one tokio Instant::now {clock:>5.1} ns",
            ours / theirs,
            ours / theirs_os
        );
    }
    let (r1, r2) = (&rows[0], &rows[1]);
    println!(
        "summary: vs_governor_1t={:.2} vs_governor_2t={:.2} vs_governor_os_clock_1t={:.2} vs_governor_os_clock_2t={:.2} backstop_1t_ns={:.1} governor_1t_ns={:.1} clock_read_ns={:.1}",
        r1.1 / r1.2,
        r2.1 / r2.2,
        r1.1 / r1.3,
        r2.1 / r2.3,
        r1.1,
        r1.2,
        r1.4
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
