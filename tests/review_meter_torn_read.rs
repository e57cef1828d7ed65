//! Review (h-review): a `LittleMeter` snapshot taken while a request departs can count that
//! request twice (in flight *and* completed: `totals` reads `DEPARTURES` before `CLOSED_AREA_US`
//! and the outcome counts, a departure stores them the other way round). The next snapshot counts
//! it once, so its area and arrival figures go *down*, and `LittleSnapshot::since` subtracts them
//! with `wrapping_sub`: the report then says ~1.8e13 s of concurrency-seconds (or 2^64 - 1
//! arrivals) for a 1 ms interval. `pid::AverageConcurrency` samples exactly this way.
//!
//! The clock is a manual one, so nothing but the torn read can make the figures move backwards:
//! no request arrives after the set-up, and time only moves forward (1 ms per snapshot).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use backstop::classify::Outcome;
use backstop::clock::Clock;
use backstop::metrics::LittleMeter;

#[test]
fn a_snapshot_racing_a_departure_never_reports_absurd_figures() {
    const N: usize = 400_000;
    let (clock, time) = Clock::manual();
    let meter = LittleMeter::builder("torn_read")
        .clock(clock)
        .build()
        .unwrap();
    let guards: Vec<_> = (0..N).map(|_| meter.start()).collect();
    // Every request has run 1 s when it departs: each double count is worth 1 s of area.
    time.advance(Duration::from_secs(1));
    let done = AtomicBool::new(false);
    let (mut worst_concurrency, mut bad_concurrency, mut bad_arrivals, mut readings) =
        (0f64, 0u64, 0u64, 0u64);
    let mut worst_arrivals = 0u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for g in guards {
                g.finish(Outcome::Success);
            }
            done.store(true, Relaxed);
        });
        let mut prev = meter.snapshot();
        while !done.load(Relaxed) {
            time.advance(Duration::from_millis(1));
            let cur = meter.snapshot();
            let r = cur.since(&prev);
            readings += 1;
            // No arrival after the set-up: the interval's arrivals are 0. At most N requests
            // are in flight, so the average concurrency over any interval is at most N.
            if r.arrivals != 0 {
                bad_arrivals += 1;
                worst_arrivals = worst_arrivals.max(r.arrivals);
            }
            if r.average_concurrency > N as f64 {
                bad_concurrency += 1;
            }
            worst_concurrency = worst_concurrency.max(r.average_concurrency);
            prev = cur;
        }
    });
    eprintln!(
        "{readings} readings: {bad_arrivals} with arrivals != 0, {bad_concurrency} with average \
         concurrency > {N} (worst {worst_concurrency:.3e}; worst arrivals {worst_arrivals})"
    );
    assert_eq!(
        (bad_arrivals, bad_concurrency),
        (0, 0),
        "worst average concurrency {worst_concurrency:.3e} with at most {N} in flight"
    );
}
