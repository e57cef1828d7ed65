//! Loom models of the meter. The last two race a snapshot against a departure (see
//! `snapshot_race`): removing the reader's check of the shard's bracket (`Counters::
//! read_consistent`) fails both at once (tried, put back).
//!
//! The first ones model the meter's retirement (`retire.rs`): loom runs every interleaving (up to
//! its preemption bound) of real [`LittleMeter`] guards departing on their own threads while
//! the meter's last handle is dropped, and checks that the state is freed only after every
//! guard's last read of it, once, and at the latest by the next sweep.
//!
//! Run: `RUSTFLAGS="--cfg backstop_loom" cargo test --lib loom_model` (`.ci/run` does, with the
//! token bucket's model). Under that cfg the shards' counters, the retired list and its length
//! are loom's, and the state carries a loom cell that every read of it by a guard reads and its
//! free writes: a free that does not happen after a read is a causality violation loom reports.
//! Moving the final release in `InFlight::depart` before `maybe_rotate` makes
//! `two_departures_race_the_retirement` fail at once (tried, and put back). The meters run on
//! a manual clock that never moves, so that each schedule replays the same branches and no
//! departure rotates or publishes (those read the state under the same marks; a publish would
//! multiply the model by the 40 loads of a snapshot).

use super::meter::{InFlight, Inner, LittleMeter};
use super::retire;
use super::shard;
use crate::classify::Outcome;
use crate::clock::Clock;
use loom::thread;

fn meter() -> LittleMeter {
    let (clock, _frozen) = Clock::manual();
    LittleMeter::builder("loom").clock(clock).build().unwrap()
}

/// Enough to find the reorderings that matter (a release made visible before a read, a sweep
/// between two departures) while keeping the run to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// What a later build, `publish()` or any meter's publication does: frees what has settled.
fn after_everything(at: *const Inner) {
    retire::sweep();
    assert!(!retire::is_waiting(at), "every request departed: freed");
}

/// One departure on its own thread against the drop of the last handle: freed by whichever
/// comes last (or, when the departure missed the list, by the next sweep), never before the
/// departure's last read.
#[test]
fn a_departure_races_the_last_handle() {
    model(|| {
        let meter = meter();
        let at = meter.state();
        let guard = meter.start();
        // Both on threads of their own: loom then explores the drop landing anywhere in the
        // departure (from the model's main thread it kept the drop ahead of the departure).
        let t = thread::spawn(move || guard.finish(Outcome::Success));
        let last = thread::spawn(move || drop(meter));
        t.join().unwrap();
        last.join().unwrap();
        after_everything(at);
    });
}

/// Two departures on two threads (one finished, one dropped) racing the retirement: neither
/// is enough alone, and the free waits for both.
#[test]
fn two_departures_race_the_retirement() {
    model(|| {
        let meter = meter();
        let at = meter.state();
        let (a, b) = (meter.start(), meter.start());
        let ta = thread::spawn(move || a.finish(Outcome::Success));
        let tb = thread::spawn(move || drop(b));
        let last = thread::spawn(move || drop(meter));
        ta.join().unwrap();
        tb.join().unwrap();
        last.join().unwrap();
        after_everything(at);
    });
}

/// The same race with both departing threads on the shared shard (atomic adds), where the last
/// release's `Acquire` read must see the earlier one through the `fetch_add`s' release sequence.
#[test]
fn departures_on_the_shared_shard_race_the_retirement() {
    model(|| {
        let meter = meter();
        let at = meter.state();
        let (a, b) = (meter.start(), meter.start());
        let depart = |g: InFlight| {
            thread::spawn(move || {
                shard::use_shared_shard();
                g.finish(Outcome::Overload(None));
            })
        };
        let (ta, tb) = (depart(a), depart(b));
        let last = thread::spawn(move || drop(meter));
        ta.join().unwrap();
        tb.join().unwrap();
        last.join().unwrap();
        after_everything(at);
    });
}

/// A snapshot racing a departure on another thread (the request arrived on the model's main
/// thread): on a clock that stands at 50 ms the request's area is 50 ms whether the snapshot
/// sees it in flight or completed (an average concurrency of 1), so any reading that sees half
/// of the departure, or the departure without the arrival, reads another area or another count.
/// (The first snapshot read the departure's words one by one and could count it both ways: 2.)
#[test]
fn a_snapshot_racing_a_departure_sees_it_whole() {
    snapshot_race(false);
}

/// The same on the shared shard, whose writers bracket with `fetch_add`s.
#[test]
fn a_snapshot_racing_a_departure_on_the_shared_shard_sees_it_whole() {
    snapshot_race(true);
}

fn snapshot_race(shared: bool) {
    model(move || {
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("loom_snapshot")
            .clock(clock)
            .build()
            .unwrap();
        let base = meter.snapshot();
        let guard = meter.start();
        // 50 ms: before the first publication is due (100 ms), so the departure does not
        // publish, which would multiply the model by a second snapshot.
        time.advance(std::time::Duration::from_millis(50));
        let t = thread::spawn(move || {
            if shared {
                shard::use_shared_shard();
            }
            guard.finish(Outcome::Success);
        });
        let report = meter.snapshot().since(&base);
        assert_eq!(report.average_concurrency, 1.0, "{report:?}");
        assert_eq!(report.arrivals, 1);
        assert_eq!(report.completions + report.in_flight, 1, "{report:?}");
        t.join().unwrap();
        let report = meter.snapshot().since(&base);
        assert_eq!((report.completions, report.in_flight), (1, 0));
    });
}
