//! `TokenBucket::try_acquire` against governor's direct `RateLimiter::check`, with the same
//! quota (10⁹ per second, burst 10⁶: every check is granted, so this is the grant path), on 1
//! thread and on 2 threads hammering one shared limiter.
//!
//! Every check reads a clock, and that read is a large part of its cost, so each side is
//! measured on both kinds of clock: backstop with `Clock::cpu_counter()` against governor's default
//! `quanta` clock (both read the CPU's time-stamp counter), and backstop's default
//! `Clock::tokio()` against governor on the OS clock (`MonotonicClock`). One clock read alone is
//! timed too.
//!
//! Run: `cargo bench --bench token_bucket`. After criterion's figures, the bench prints ratios
//! against governor measured in the same run (interleaved rounds, median of each).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backstop::token_bucket::{Clock, TokenBucket};
use criterion::{Criterion, criterion_group};
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const RATE: u32 = 1_000_000_000;
const BURST: u32 = 1_000_000;

fn bucket(clock: Clock) -> TokenBucket {
    TokenBucket::builder("bench")
        .capacity(f64::from(BURST))
        .rate(f64::from(RATE))
        .clock(clock)
        .build()
        .unwrap()
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
            let bucket = bucket(Clock::tokio());
            b.iter_custom(|iters| hammer(threads, iters, || bucket.try_acquire(1)))
        });
        group.bench_function(
            format!("backstop_cpu_counter_try_acquire_{threads}t"),
            |b| {
                let bucket = bucket(Clock::cpu_counter());
                b.iter_custom(|iters| hammer(threads, iters, || bucket.try_acquire(1)))
            },
        );
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
/// median time per check, and ratios of backstop to governor on the same kind of clock.
fn ratios() {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 1_000_000;
    const NAMES: [&str; 6] = [
        "backstop (CPU counter clock)",
        "governor (quanta counter clock)",
        "backstop (tokio clock)",
        "governor (OS clock)",
        "one tokio Instant::now",
        "one std Instant::now",
    ];
    let per_check = |d: Duration| d.as_nanos() as f64 / ITERS as f64;
    let mut medians = Vec::new();
    for threads in [1usize, 2] {
        let mut samples = vec![Vec::new(); NAMES.len()];
        for _ in 0..ROUNDS {
            let counter = bucket(Clock::cpu_counter());
            let quanta = governor();
            let tokio_clock = bucket(Clock::tokio());
            let os = governor_os_clock();
            let timings = [
                hammer(threads, ITERS, || counter.try_acquire(1)),
                hammer(threads, ITERS, || quanta.check().is_ok()),
                hammer(threads, ITERS, || tokio_clock.try_acquire(1)),
                hammer(threads, ITERS, || os.check().is_ok()),
                hammer(threads, ITERS, || {
                    black_box(tokio::time::Instant::now());
                    true
                }),
                // tokio's clock is std's plus a check for a paused clock, which only builds
                // with tokio's `test-util` (as this bench does) make.
                hammer(threads, ITERS, || {
                    black_box(Instant::now());
                    true
                }),
            ];
            for (sample, t) in samples.iter_mut().zip(timings) {
                sample.push(per_check(t));
            }
        }
        let row: Vec<f64> = samples
            .iter_mut()
            .map(|v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        println!(
            "\n{threads} thread(s), ns per check, median of {ROUNDS} interleaved rounds of {ITERS}:"
        );
        for (name, ns) in NAMES.iter().zip(&row) {
            println!("  {name:<32} {ns:>6.1}");
        }
        println!(
            "  backstop / governor: {:.2}x on the CPU counter, {:.2}x on the OS clock",
            row[0] / row[1],
            row[2] / row[3]
        );
        medians.push(row);
    }
    let (one, two) = (&medians[0], &medians[1]);
    println!(
        "summary: counter_vs_governor_1t={:.2} counter_vs_governor_2t={:.2} tokio_clock_vs_governor_os_clock_1t={:.2} tokio_clock_vs_governor_os_clock_2t={:.2} backstop_counter_1t_ns={:.1} governor_1t_ns={:.1} backstop_tokio_clock_1t_ns={:.1} tokio_clock_read_ns={:.1} std_clock_read_ns={:.1}",
        one[0] / one[1],
        two[0] / two[1],
        one[2] / one[3],
        two[2] / two[3],
        one[0],
        one[1],
        one[2],
        one[4],
        one[5]
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
