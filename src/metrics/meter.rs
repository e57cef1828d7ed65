#[cfg(all(test, backstop_loom))]
use loom::sync::atomic::AtomicU64;
use std::fmt;
use std::ptr::NonNull;
#[cfg(not(all(test, backstop_loom)))]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use super::names;
use super::publish;
use super::retire;
use super::shard::{self, Sharded, shard_index};
use crate::classify::Outcome;
use crate::clock::{Clock, Epoch};
use crate::error::{ConfigError, check};

// Each event adds to words of the calling thread's shard, no compare-and-swap: an arrival at
// `t` adds `(t << COUNT_BITS) + 1` to `arrivals`, a departure of a request that
// started at `s` adds `(s << COUNT_BITS) + 1` to `departures` (times in µs since the meter's
// epoch). The difference of the two sums, wrapping, holds the requests in flight in its low
// bits and Σ start of those in flight (mod 2^44) above them, so the area under the in-flight
// curve at `now` is Σ(completed latencies) + in_flight·now − Σ(start of those in flight), exact
// as long as fewer than 2^20 are in flight and their open area is under 2^43 µs. Each event's
// adds are one bracketed write (`Sharded::add_all_consistent_at`), so a reading sees a
// departure's word, closed area, latency and outcome together or not at all.
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TIME_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;
// An open area past half the 44-bit range is a later arrival read before our clock: none.
const TIME_HALF: u64 = 1 << (64 - COUNT_BITS - 1);
// The longest window: far inside the 44-bit µs range (about 203 days), so the end of a window
// is never confused with a wrapped time.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
// How often the series are pushed to the `metrics` recorder from the meter's own sums: a
// facade call per request would cost more than the meter itself (and contend across threads).
const PUBLISH_EVERY_NS: u64 = 100_000_000;
// How many times a reading tries for an instant with no event between its two passes (see
// `Inner::totals`) before it keeps the closest one: each try is ~20 loads of lines that the
// counting threads own.
const CUT_TRIES: u32 = 4;

// The sums each thread's shard keeps (see `shard::Sharded`).
const ARRIVALS: usize = 0;
const DEPARTURES: usize = 1;
/// Σ (end − start) of completed requests, in µs: the closed part of the area.
const CLOSED_AREA_US: usize = 2;
const LATENCY_NS: usize = 3;
/// Four outcome counts from here, in `names::OUTCOMES` order.
const OUTCOME_0: usize = 4;
/// Arrivals, a plain count (+1 each): with `RELEASED`, what the retirement compares.
const ARRIVED: usize = 8;
/// Releases, a plain count: +1 as a departure's last touch of the state, after it has counted,
/// rotated and published. Equal to `ARRIVED` exactly when no guard can touch the meter any more
/// (see `retire.rs`).
const RELEASED: usize = 9;

/// A Little's-law meter: how many requests are in flight, how long they take, and what that
/// means for concurrency and headroom.
///
/// It keeps two figures. The sum of completed latencies over a window, divided by the window, is
/// the average concurrency by Little's law (`L = λW`). The exact area under the in-flight curve,
/// updated at each arrival and departure, gives the same figure but counts long requests while
/// they run. Against a stated capacity (workers, connections, a lock's 1), the meter reports
/// utilization: how close the service is to running out of headroom.
///
/// A cheap [`Clone`] handle: clones share one meter. The request path is lock-free and reads the
/// meter's [`Clock`] once per arrival and once per departure (see [`LittleMeterBuilder::clock`]
/// for the clock, and its one trap in tests). Each of the first 7 threads that count writes
/// only its own shard, with plain stores; threads past those share one shard and add to it
/// with `fetch_add`.
///
/// A snapshot is consistent: it reads each shard between two events of that shard, every
/// shard's departures before any arrivals (so a request that moved threads is never seen
/// departed but not arrived), and is one instant of the whole meter unless events keep landing
/// during the read (then the closest of 4 tries). What no reading can see is an event that has
/// read the clock but not yet stored: such a departure counts as in flight up to the snapshot's
/// time, so the next snapshot can be lower by that event's few nanoseconds (more if its thread
/// is preempted there); [`LittleSnapshot::since`] reads a figure that went back as 0, never as a
/// wrapped one.
///
/// ```
/// use backstop::metrics::LittleMeter;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::ConfigError> {
/// let meter = LittleMeter::builder("db_pool").capacity(8.0).build()?;
/// let before = meter.snapshot();
/// let request = meter.start();
/// tokio::time::advance(Duration::from_millis(500)).await;
/// request.finish(backstop::classify::Outcome::Success);
/// tokio::time::advance(Duration::from_millis(500)).await;
///
/// let report = meter.snapshot().since(&before);
/// assert_eq!(report.average_concurrency, 0.5); // busy half of one second
/// assert_eq!(report.utilization, Some(0.5 / 8.0));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LittleMeter {
    handle: Arc<Handle>,
}

/// The meter's state, owned by its handles while any is left, then by `retire` until its last
/// request in flight departs. Requests in flight hold a plain pointer to it, not a reference
/// count: an `Arc` cloned per request cost two locked instructions a request, and bounced its
/// count between cores when two threads measured at once (3× one thread's cost). See
/// `retire.rs` for why the pointer stays valid.
struct Handle(NonNull<Inner>);

// SAFETY: a handle is a shared reference to `Inner`, which is `Send + Sync`.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `build`; this was its last handle (`Handle` is held
        // only in one `Arc` and never cloned), so it is retired once.
        unsafe { retire::retire(self.0) }
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Inner>();
};

impl fmt::Debug for LittleMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner();
        f.debug_struct("LittleMeter")
            .field("name", &inner.name)
            .field("clock", &inner.epoch)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(super) struct Inner {
    name: String,
    epoch: Epoch,
    capacity: Option<f64>,
    window: Duration,
    sums: Sharded<10>,
    /// Read by a guard wherever it reads the state and written when the state is freed, so that
    /// loom reports a free that does not happen after every guard's last read (`loom_model.rs`).
    #[cfg(all(test, backstop_loom))]
    alive: Alive,
    /// Nanoseconds since the epoch (u64: no wrap in 584 years, where the µs of the area wrap
    /// every 203 days).
    next_rotation_ns: AtomicU64,
    next_publish_ns: AtomicU64,
    rotation: Mutex<Rotation>,
    published: Mutex<Published>,
    series: Series,
}

#[derive(Debug)]
struct Rotation {
    start: LittleSnapshot,
    last: Option<LittleReport>,
}

/// The outcome counts last pushed to the recorder (counters take increments).
#[derive(Debug, Default)]
struct Published {
    outcomes: [u64; 4],
}

/// The meter's sums at one instant, summed over the shards.
struct Totals {
    snapshot: LittleSnapshot,
    outcomes: [u64; 4],
}

#[derive(Debug)]
struct Series {
    in_flight: Gauge,
    outcomes: [Counter; 4],
    latency_sum: Gauge,
    area: Gauge,
    average_concurrency: Gauge,
    utilization: Gauge,
}

impl Series {
    fn register(name: &str) -> Self {
        names::describe();
        let label = names::NAME_LABEL;
        let name = name.to_owned();
        let outcome = |o: &'static str| counter!(names::REQUESTS, label => name.clone(), names::OUTCOME_LABEL => o);
        let series = Series {
            in_flight: gauge!(names::IN_FLIGHT, label => name.clone()),
            outcomes: names::OUTCOMES.map(outcome),
            latency_sum: gauge!(names::LATENCY_SUM_SECONDS, label => name.clone()),
            area: gauge!(names::CONCURRENCY_SECONDS, label => name.clone()),
            average_concurrency: gauge!(names::AVERAGE_CONCURRENCY, label => name.clone()),
            utilization: gauge!(names::UTILIZATION, label => name),
        };
        // Touch every series so that it reads 0, not missing, before the first request.
        series.in_flight.set(0.0);
        series.latency_sum.set(0.0);
        series.area.set(0.0);
        series.average_concurrency.set(0.0);
        series.utilization.set(0.0);
        for c in &series.outcomes {
            c.increment(0);
        }
        series
    }
}

/// A figure-for-figure copy of a meter's totals at one instant. Two snapshots give the figures
/// for the interval between them ([`since`](Self::since)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LittleSnapshot {
    at: Instant,
    /// Nanoseconds since the meter's epoch, on the meter's clock: intervals come from these.
    at_ns: u64,
    area_us: u64,
    latency_ns: u64,
    arrivals: u64,
    completions: u64,
    in_flight: u64,
    capacity: Option<f64>,
}

/// What a meter saw over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LittleReport {
    /// The length of the interval.
    pub interval: Duration,
    /// Average requests in flight: the area under the in-flight curve over the interval.
    pub average_concurrency: f64,
    /// The sum of latencies of requests that completed in the interval, over its length: Little's
    /// law's estimate of the same average, counting only completed requests.
    pub completed_concurrency: f64,
    /// Requests that arrived in the interval.
    pub arrivals: u64,
    /// Requests that completed (or were cancelled) in the interval.
    pub completions: u64,
    /// Arrivals per second.
    pub arrival_rate: f64,
    /// The mean latency of the requests that completed in the interval.
    pub mean_latency: Option<Duration>,
    /// Requests in flight at the end of the interval.
    pub in_flight: u64,
    /// `average_concurrency / capacity`, when the meter was given a capacity.
    pub utilization: Option<f64>,
}

impl LittleSnapshot {
    /// The figures for the interval from `earlier` to this snapshot. A figure that went back
    /// (a snapshot taken after `self`, or an event caught between its clock read and its
    /// store: see [`LittleMeter`]) counts 0, never a wrapped difference.
    pub fn since(&self, earlier: &LittleSnapshot) -> LittleReport {
        let interval = Duration::from_nanos(self.at_ns.saturating_sub(earlier.at_ns));
        let secs = interval.as_secs_f64();
        let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let area = forward(self.area_us, earlier.area_us) as f64 / 1e6;
        let latency = forward(self.latency_ns, earlier.latency_ns);
        let arrivals = forward(self.arrivals, earlier.arrivals);
        let completions = forward(self.completions, earlier.completions);
        let average_concurrency = per_sec(area);
        LittleReport {
            interval,
            average_concurrency,
            completed_concurrency: per_sec(latency as f64 / 1e9),
            arrivals,
            completions,
            arrival_rate: per_sec(arrivals as f64),
            mean_latency: (completions > 0).then(|| Duration::from_nanos(latency / completions)),
            in_flight: self.in_flight,
            utilization: self.capacity.map(|c| average_concurrency / c),
        }
    }

    /// When the snapshot was taken, as a tokio instant (on a meter that reads the CPU's
    /// counter, tokio's clock read at the same moment).
    pub fn at(&self) -> Instant {
        self.at
    }
}

impl LittleMeter {
    /// Starts a builder for a meter whose series are labelled `name`.
    pub fn builder(name: impl Into<String>) -> LittleMeterBuilder {
        LittleMeterBuilder {
            name: name.into(),
            capacity: None,
            window: Duration::from_secs(10),
            clock: Clock::default(),
        }
    }

    /// Where the state lives, for the tests that check when it is freed.
    #[cfg(test)]
    pub(super) fn state(&self) -> *const Inner {
        self.handle.0.as_ptr()
    }

    fn inner(&self) -> &Inner {
        // SAFETY: the state lives at least as long as this handle (see `Handle`).
        unsafe { self.handle.0.as_ref() }
    }

    /// The name the meter's series carry.
    pub fn name(&self) -> &str {
        &self.inner().name
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        let inner = self.inner();
        // Departures first: a request seen departed is then seen arrived, whichever threads
        // its two events ran on (see `Inner::totals`).
        let departures = inner.sums.sum(DEPARTURES);
        let arrivals = inner.sums.sum(ARRIVALS);
        arrivals.wrapping_sub(departures) & COUNT_MAX
    }

    /// Records an arrival now; the returned guard records the departure when it is finished or
    /// dropped (a dropped guard counts as `cancelled`).
    #[inline]
    pub fn start(&self) -> InFlight {
        let inner = self.inner();
        let now_ns = inner.epoch.elapsed_ns();
        let now_us = (now_ns / 1_000) & TIME_MASK;
        let shard = shard_index();
        inner.sums.add_all_consistent_at(
            shard,
            [(ARRIVALS, (now_us << COUNT_BITS) + 1), (ARRIVED, 1)],
        );
        inner.maybe_publish(now_ns);
        InFlight {
            inner: self.handle.0,
            started_ns: now_ns,
            finished: false,
        }
    }

    /// The meter's totals now.
    pub fn snapshot(&self) -> LittleSnapshot {
        let inner = self.inner();
        inner.totals().snapshot
    }

    /// The figures for the last full window (see [`LittleMeterBuilder::window`]), or for the time
    /// since the meter was built while no window has ended yet.
    pub fn report(&self) -> LittleReport {
        let inner = self.inner();
        let now_ns = inner.epoch.elapsed_ns();
        inner.maybe_rotate(now_ns);
        let rotation = inner.rotation.lock().unwrap_or_else(|e| e.into_inner());
        match rotation.last {
            Some(report) => report,
            None => inner.totals().snapshot.since(&rotation.start),
        }
    }

    /// Pushes the meter's figures to its series now. The meter publishes by itself at most every
    /// 100 ms of its clock, at an arrival or a departure, and at the end of each window: call
    /// this where the series must be exact at once, such as before a scrape or in a test.
    pub fn publish(&self) {
        let inner = self.inner();
        inner.publish(inner.epoch.elapsed_ns());
    }
}

/// How far a 64-bit sum moved from `then` to `now`: the wrapping difference, which stays right
/// across a wrap of the sum itself, read as 0 when it is "negative" (past 2^63: the sum went
/// back, which no count does in 2^63 events).
fn forward(now: u64, then: u64) -> u64 {
    let d = now.wrapping_sub(then);
    if d > i64::MAX as u64 { 0 } else { d }
}

/// A departure's closed area (µs) and latency (ns), and its end as counted, from the times of
/// its arrival and its departure. On the CPU's counter a departure on a core whose counter lags
/// the arrival's can read an end before the start: that counts as an end at the start (no
/// time), where the wrapping µs difference would have added 2^44 µs (203 days) to the area.
fn closed(started_ns: u64, end_ns: u64) -> (u64, u64, u64) {
    let end_ns = end_ns.max(started_ns);
    // Each time masked to the 44-bit field, as the departure word holds the start: across a
    // wrap of the field, the masked difference is still the right one.
    let closed_us = micros(end_ns).wrapping_sub(micros(started_ns)) & TIME_MASK;
    (closed_us, end_ns - started_ns, end_ns)
}

/// The µs of the area's time field from nanoseconds since the epoch (u64 ns: 584 years, from
/// which both the µs of the area and the ns of the latency come: one clock read per event).
fn micros(ns: u64) -> u64 {
    (ns / 1_000) & TIME_MASK
}

impl Inner {
    /// True when every request that arrived has departed and let go of the meter: each adds 1
    /// to `arrived` and, as its last touch, to `released`. Exact once no handle is left (see
    /// `retire.rs`); the loads acquire the departing threads' stores.
    pub(super) fn settled(&self) -> bool {
        self.sums.sum(ARRIVED) == self.sums.sum(RELEASED)
    }

    /// Marks a read of the state by a guard, for the loom model; nothing otherwise.
    #[inline(always)]
    fn touch(&self) {
        #[cfg(all(test, backstop_loom))]
        self.alive.0.with(|_| ());
    }

    /// Sums the shards into one consistent reading, taken now.
    ///
    /// Each shard is read between two of its events (`Sharded::consistent_sums`), so a
    /// departure's word, closed area and outcome are seen together: the first version read them
    /// one by one and could count a departing request both in flight and completed, then once,
    /// so the next reading's area and arrivals went back. Every shard's departure side is read
    /// before any arrival side: a request that arrived on one thread and departed on another is
    /// then never seen departed but not arrived (its arrival happens before its departure, which
    /// this read acquired). Arrivals are their own count, not completions + in flight.
    ///
    /// The clock is read between the two passes. When no shard saw an event between its two
    /// reads, the reading is one instant of the whole meter, at that clock read: every event it
    /// holds read the clock before, every event it lacks stores after (only a departure caught
    /// between its own clock read and its store is then counted in flight a little too long).
    /// Else it tries again, up to `CUT_TRIES` times, and keeps the reading with the fewest events
    /// between its passes, timed by a clock read before its first pass: a request that arrived
    /// there counts as in flight from a start after that time (the open area a little low), and
    /// no departure counts as in flight past its end, so the next reading never goes back for
    /// it (a test on 3 loaded processes caught readings timed between the passes going back).
    fn totals(&self) -> Totals {
        let mut best = self.try_totals();
        for _ in 1..CUT_TRIES {
            if best.0 == 0 {
                break;
            }
            let next = self.try_totals();
            if next.0 < best.0 {
                best = next;
            }
        }
        best.1
    }

    /// One reading (see `totals`), and how many events landed between its two passes.
    fn try_totals(&self) -> (u64, Totals) {
        let early_ns = self.epoch.elapsed_ns();
        let ([departures, closed_us, latency_ns, o0, o1, o2, o3], before) =
            self.sums.consistent_sums([
                DEPARTURES,
                CLOSED_AREA_US,
                LATENCY_NS,
                OUTCOME_0,
                OUTCOME_0 + 1,
                OUTCOME_0 + 2,
                OUTCOME_0 + 3,
            ]);
        let cut_ns = self.epoch.elapsed_ns();
        let ([arrivals_word, arrivals], after) = self.sums.consistent_sums([ARRIVALS, ARRIVED]);
        let between = before
            .iter()
            .zip(after)
            .fold(0u64, |n, (b, a)| n.wrapping_add(a.wrapping_sub(*b)));
        // Not one instant: a departure stored between the first pass and `cut_ns` would count
        // as in flight until `cut_ns`, past its end, and the next reading would be lower. The
        // time before the first pass errs the other way only: what the passes saw arrive after
        // it adds less open area than it will (a reading low, never one that goes back for it).
        let now_ns = if between == 0 { cut_ns } else { early_ns };
        let outcomes = [o0, o1, o2, o3];
        let open_word = arrivals_word.wrapping_sub(departures);
        let in_flight = open_word & COUNT_MAX;
        let started_sum = open_word >> COUNT_BITS;
        // Below zero (starts after the clock read) counts as no open area.
        let open = in_flight
            .wrapping_mul(micros(now_ns))
            .wrapping_sub(started_sum)
            & TIME_MASK;
        let open = if open >= TIME_HALF { 0 } else { open };
        let completions = outcomes.iter().fold(0u64, |a, &o| a.wrapping_add(o));
        let totals = Totals {
            snapshot: LittleSnapshot {
                at: self.epoch.tokio_at(now_ns),
                at_ns: now_ns,
                area_us: closed_us.wrapping_add(open),
                latency_ns,
                arrivals,
                completions,
                in_flight,
                capacity: self.capacity,
            },
            outcomes,
        };
        (between, totals)
    }

    #[inline]
    fn maybe_publish(&self, now_ns: u64) {
        self.touch();
        if now_ns >= self.next_publish_ns.load(Relaxed) {
            self.publish(now_ns);
        }
    }

    #[cold]
    fn publish(&self, now_ns: u64) {
        // Whoever holds the lock publishes; the rest move on (their events are in the sums).
        let Some(mut published) = publish::try_lock_or_skip(&self.published) else {
            return;
        };
        self.next_publish_ns
            .store(now_ns.saturating_add(PUBLISH_EVERY_NS), Relaxed);
        let totals = self.totals();
        let snap = &totals.snapshot;
        self.series.in_flight.set(snap.in_flight as f64);
        self.series.latency_sum.set(snap.latency_ns as f64 / 1e9);
        self.series.area.set(snap.area_us as f64 / 1e6);
        publish::push_counts(
            &self.series.outcomes,
            &mut published.outcomes,
            totals.outcomes,
        );
        drop(published);
        // A retired meter whose last departure missed the list is freed here at the latest
        // (see `retire.rs`): this runs every 100 ms of any live meter's traffic.
        retire::sweep();
    }

    #[inline]
    fn maybe_rotate(&self, now_ns: u64) {
        self.touch();
        if now_ns >= self.next_rotation_ns.load(Relaxed) {
            self.rotate(now_ns);
        }
    }

    #[cold]
    fn rotate(&self, now_ns: u64) {
        // A rotation is a slow path; whoever holds the lock does it and the rest move on. The
        // series are set after the lock is let go, so a recorder that panics cannot poison it.
        let Some(mut rotation) = publish::try_lock_or_skip(&self.rotation) else {
            return;
        };
        let window_ns = self.window.as_nanos() as u64;
        if now_ns < rotation.start.at_ns + window_ns {
            return;
        }
        let snapshot = self.totals().snapshot;
        let report = snapshot.since(&rotation.start);
        rotation.last = Some(report);
        rotation.start = snapshot;
        self.next_rotation_ns
            .store(now_ns.saturating_add(window_ns), Relaxed);
        drop(rotation);
        self.series
            .average_concurrency
            .set(report.average_concurrency);
        if let Some(u) = report.utilization {
            self.series.utilization.set(u);
        }
        self.publish(now_ns);
    }
}

/// A loom cell with nothing in it: loom tracks who reads and writes it, and checks that every
/// write happens after every read.
#[cfg(all(test, backstop_loom))]
#[derive(Debug)]
struct Alive(loom::cell::UnsafeCell<()>);

// SAFETY: the cell holds nothing; it is read and written only to tell loom who touched the state.
#[cfg(all(test, backstop_loom))]
unsafe impl Sync for Alive {}

// The loom model checks that the state is freed only after every guard's last read of it.
#[cfg(all(test, backstop_loom))]
impl Drop for Inner {
    fn drop(&mut self) {
        self.alive.0.with_mut(|_| ());
    }
}

/// One request in flight through a [`LittleMeter`]; records its departure when finished or
/// dropped.
pub struct InFlight {
    /// The meter's state: valid until this guard's release is stored (see `retire.rs`).
    inner: NonNull<Inner>,
    /// Nanoseconds since the meter's epoch at the arrival.
    started_ns: u64,
    finished: bool,
}

// SAFETY: a guard reads and adds to the meter's shared state, which is `Send + Sync`, and the
// state outlives it wherever it goes.
unsafe impl Send for InFlight {}
unsafe impl Sync for InFlight {}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("started_ns", &self.started_ns)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// Records the departure with `outcome` (success, error or overload).
    #[inline]
    pub fn finish(mut self, outcome: Outcome) {
        self.depart(match outcome {
            Outcome::Success => 0,
            Outcome::Retryable | Outcome::Final => 1,
            Outcome::Overload(_) => 2,
        });
    }

    #[inline]
    fn depart(&mut self, outcome_index: usize) {
        self.finished = true;
        // SAFETY: the state lives until this guard's release is stored (see `retire.rs`), and
        // this is the guard's one departure (`finished`); `inner` is not used after that store.
        let inner = unsafe { self.inner.as_ref() };
        inner.touch();
        let end_ns = inner.epoch.elapsed_ns();
        let (closed_us, latency_ns, end_ns) = closed(self.started_ns, end_ns);
        // One bracketed write: a reading sees the request in flight or completed, never both
        // (see `Inner::totals`).
        let shard = shard_index();
        let word = (micros(self.started_ns) << COUNT_BITS) + 1;
        inner.sums.add_all_consistent_at(
            shard,
            [
                (DEPARTURES, word),
                (CLOSED_AREA_US, closed_us),
                (LATENCY_NS, latency_ns),
                (OUTCOME_0 + outcome_index, 1),
            ],
        );
        let released = inner.sums.at(shard, RELEASED);
        inner.maybe_rotate(end_ns);
        inner.maybe_publish(end_ns);
        // The last touch of the state, with `Release`: from here the state may be freed under
        // us, so neither `inner` nor `self.inner` is used again (see `retire.rs`).
        shard::add_release(released, shard, 1);
        retire::sweep();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.depart(3);
        }
    }
}

/// Builds a [`LittleMeter`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct LittleMeterBuilder {
    name: String,
    capacity: Option<f64>,
    window: Duration,
    clock: Clock,
}

impl LittleMeterBuilder {
    /// The concurrency the measured resource can sustain (workers, connections; 1 for a lock).
    /// Must be finite and greater than zero (NaN, 0, negatives and infinities are refused).
    /// Without it the meter reports no utilization.
    pub fn capacity(mut self, capacity: f64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The window over which [`LittleMeter::report`] and the average-concurrency and
    /// utilization gauges are computed. Between 1 ms and 1 day (the meter's time field wraps
    /// after about 200 days, so a longer window could never end cleanly). Default 10 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Where the meter reads the time, once per arrival and once per departure. The default is
    /// chosen at [`build`](Self::build): tokio's clock inside a runtime whose clock is paused
    /// (so a test's `advance` moves the meter), else the CPU's counter, a few ns a read where
    /// tokio's clock (`clock_gettime`) costs 20 to 30 on a virtual machine. The trap: a meter
    /// built before `tokio::time::pause()` runs on the real counter; build it after, or give it
    /// [`Clock::tokio`]. See [`Clock`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the values, registers every series (each reads 0 until the first request) with
    /// the `metrics` recorder installed now, and builds the meter.
    pub fn build(self) -> Result<LittleMeter, ConfigError> {
        let name = check(
            "name",
            self.name,
            |n| !n.trim().is_empty(),
            "a non-empty name",
        )?;
        if let Some(c) = self.capacity {
            check(
                "capacity",
                c,
                |c| c.is_finite() && *c > 0.0,
                "finite and greater than zero",
            )?;
        }
        let window = check(
            "window",
            self.window,
            |w| *w >= Duration::from_millis(1) && *w <= MAX_WINDOW,
            "between 1 ms and 1 day",
        )?;
        let series = Series::register(&name);
        let epoch = self.clock.start();
        let start = LittleSnapshot {
            at: epoch.tokio_at(0),
            at_ns: 0,
            area_us: 0,
            latency_ns: 0,
            arrivals: 0,
            completions: 0,
            in_flight: 0,
            capacity: self.capacity,
        };
        let inner = Inner {
            name,
            epoch,
            capacity: self.capacity,
            window,
            sums: Sharded::default(),
            next_rotation_ns: AtomicU64::new(window.as_nanos() as u64),
            next_publish_ns: AtomicU64::new(PUBLISH_EVERY_NS),
            rotation: Mutex::new(Rotation { start, last: None }),
            published: Mutex::new(Published::default()),
            series,
            #[cfg(all(test, backstop_loom))]
            alive: Alive(loom::cell::UnsafeCell::new(())),
        };
        let meter = LittleMeter {
            handle: Arc::new(Handle(NonNull::from(Box::leak(Box::new(inner))))),
        };
        let weak = Arc::downgrade(&meter.handle);
        super::publish::register(move || {
            weak.upgrade()
                .map(|handle| LittleMeter { handle }.publish())
                .is_some()
        });
        retire::sweep();
        Ok(meter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn state(meter: &LittleMeter) -> *const Inner {
        meter.state()
    }

    /// A meter on a manual clock: the CPU's counter is not there under Miri.
    fn manual(name: &str) -> LittleMeter {
        LittleMeter::builder(name)
            .clock(Clock::manual().0)
            .build()
            .unwrap()
    }

    /// The state outlives the last handle exactly as long as requests are in flight, and the
    /// last departure frees it, on whichever thread it lands.
    #[test]
    fn a_dropped_meter_lives_until_its_last_request_departs() {
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("retire").clock(clock).build().unwrap();
        let at = state(&meter);
        let (a, b) = (meter.start(), meter.start());
        let clone = meter.clone();
        drop(meter);
        assert!(!retire::is_waiting(at), "a clone is still a handle");
        drop(clone);
        assert!(retire::is_waiting(at), "two requests are in flight");
        time.advance(Duration::from_millis(5));
        a.finish(Outcome::Success);
        assert!(retire::is_waiting(at), "one request is in flight");
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert!(!retire::is_waiting(at), "freed by the last departure");

        let idle = manual("idle");
        let at = state(&idle);
        drop(idle);
        assert!(!retire::is_waiting(at), "nothing in flight: freed at once");
    }

    /// Threads finish their requests while the meter's last handle is dropped under them; every
    /// departure lands, and the state is freed once they are all in. Long batches (the drop
    /// lands early) and batches of 2 (it lands among the last departures); under Miri and the
    /// address sanitizer a touch of the state after its free is reported.
    #[test]
    fn departures_racing_the_last_handle_free_the_state_once() {
        let rounds: &[(usize, usize)] = if cfg!(miri) {
            &[(2, 20), (12, 2)]
        } else {
            &[(20, 500), (300, 2)]
        };
        for per in rounds
            .iter()
            .flat_map(|&(n, per)| std::iter::repeat_n(per, n))
        {
            let meter = manual("race");
            let at = state(&meter);
            let guards: Vec<Vec<InFlight>> = (0..4)
                .map(|_| (0..per).map(|_| meter.start()).collect())
                .collect();
            let go = Barrier::new(5);
            std::thread::scope(|s| {
                for batch in guards {
                    let go = &go;
                    s.spawn(move || {
                        go.wait();
                        for (i, g) in batch.into_iter().enumerate() {
                            if i % 2 == 0 {
                                g.finish(Outcome::Success);
                            } else {
                                drop(g);
                            }
                        }
                    });
                }
                go.wait();
                drop(meter);
            });
            // The last departure may race the retirement and miss the list; the next sweep
            // (here, a build) frees it.
            drop(manual("sweeper"));
            assert!(!retire::is_waiting(at));
        }
    }

    /// A departure whose clock read lands before its arrival's (a core whose counter lags)
    /// closes no area and no latency; the first version added the wrapped difference, 2^44 µs.
    /// The manual clock cannot go back, so this tests the function the departure calls.
    #[test]
    fn a_departure_read_before_its_arrival_closes_nothing() {
        assert_eq!(closed(10_000, 7_000), (0, 0, 10_000), "end before start");
        assert_eq!(closed(10_000, 12_500), (2, 2_500, 12_500));
        // Across a wrap of the 44-bit µs field: 3 µs, not minus 2^44.
        let start = TIME_MASK * 1_000;
        assert_eq!(closed(start, start + 3_000), (3, 3_000, start + 3_000));
    }

    /// A sum that went back reads as 0, a sum that wrapped as its true difference.
    #[test]
    fn a_figure_that_went_back_counts_zero() {
        assert_eq!(forward(5, 7), 0);
        assert_eq!(forward(2, u64::MAX - 1), 4, "the sum itself wrapped");
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("back").clock(clock).build().unwrap();
        let _held = meter.start();
        time.advance(Duration::from_millis(10));
        let early = meter.snapshot();
        meter.start().finish(Outcome::Success);
        time.advance(Duration::from_millis(10));
        let late = meter.snapshot();
        let backwards = early.since(&late);
        assert_eq!(
            (
                backwards.arrivals,
                backwards.completions,
                backwards.average_concurrency
            ),
            (0, 0, 0.0)
        );
        assert_eq!(late.since(&early).arrivals, 1);
    }

    /// A panic under either lock (a recorder's, say) poisons it; rotation and publishing take
    /// the lock anyway. Before, `try_lock` failed with `Poisoned` forever and both stopped.
    #[test]
    fn a_poisoned_lock_stops_neither_rotation_nor_publishing() {
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("poison")
            .window(Duration::from_secs(1))
            .clock(clock)
            .build()
            .unwrap();
        let inner = meter.inner();
        std::thread::scope(|s| {
            let panicked = s
                .spawn(|| {
                    let _rotation = inner.rotation.lock();
                    let _published = inner.published.lock();
                    panic!("a recorder panics under both locks");
                })
                .join();
            assert!(panicked.is_err());
        });
        assert!(inner.rotation.is_poisoned() && inner.published.is_poisoned());
        time.advance(Duration::from_millis(1_100));
        meter.start().finish(Outcome::Success);
        assert!(
            inner.next_publish_ns.load(Relaxed) > PUBLISH_EVERY_NS,
            "published"
        );
        assert!(
            inner.next_rotation_ns.load(Relaxed) > 1_000_000_000,
            "rotated"
        );
        assert_eq!(meter.report().completions, 1, "the last window's report");
    }

    /// Publishing is due by nanoseconds, which do not wrap: the first version kept the due time
    /// in the 44-bit µs of the area, which wraps every 203 days, and then stopped publishing
    /// from the request path until the next rotation.
    #[test]
    fn publishing_goes_on_across_the_wrap_of_the_area_time() {
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("wrap_time")
            .window(MAX_WINDOW)
            .clock(clock)
            .build()
            .unwrap();
        let inner = meter.inner();
        // 1 ms before the µs field wraps.
        time.advance(Duration::from_micros(TIME_MASK - 1_000));
        meter.start().finish(Outcome::Success);
        let before_wrap = inner.next_publish_ns.load(Relaxed);
        time.advance(Duration::from_millis(200));
        meter.start().finish(Outcome::Success);
        assert!(
            inner.next_publish_ns.load(Relaxed) > before_wrap,
            "published after the wrap"
        );
    }

    /// The first version compared wrapping sums of the packed `(start << 20) + 1` words, which
    /// 2^20 requests in flight can make sum to 0 modulo 2^64: 2^20 − 1 started at 0 µs and one
    /// at 2^44 − 1 µs. Then the departure of one more request "settled" the meter and freed its
    /// state under the 2^20 guards. The plain counts see 1 release of 2^20 + 1 arrivals.
    #[test]
    #[cfg_attr(miri, ignore = "2^20 requests: minutes under Miri")]
    fn in_flight_words_that_wrap_to_zero_do_not_settle_the_meter() {
        let (clock, time) = Clock::manual();
        let meter = LittleMeter::builder("wrap").clock(clock).build().unwrap();
        let at = state(&meter);
        let mut in_flight: Vec<InFlight> =
            (0..(1 << COUNT_BITS) - 1).map(|_| meter.start()).collect();
        time.advance(Duration::from_micros(TIME_MASK));
        in_flight.push(meter.start());
        let sums = unsafe { &*at }.sums.sums();
        assert_eq!(
            sums[ARRIVALS], 0,
            "the words of the requests in flight sum to 0 modulo 2^64"
        );
        let last = meter.start();
        drop(meter);
        last.finish(Outcome::Success);
        let sums = unsafe { &*at }.sums.sums();
        assert_eq!(
            sums[ARRIVALS], sums[DEPARTURES],
            "the old test would call this settled"
        );
        assert!(retire::is_waiting(at), "2^20 requests are still in flight");
        drop(in_flight);
        assert!(!retire::is_waiting(at), "freed by the last departure");
    }
}
