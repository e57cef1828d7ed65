//! The machinery both [`Backpressure`](super::Backpressure) and
//! [`LifoQueue`](crate::lifo_queue::LifoQueue) stand on: a concurrency limit with a bounded wait
//! list in front of it.
//!
//! Two paths. While nobody waits, a request is admitted by one compare-and-swap on an atomic
//! word (the count in flight) and released by one `fetch_sub`, with no lock: the cost of tower's
//! semaphore, which takes its waiters' mutex on every release besides. Once the limit is reached,
//! the waiters live behind one short `std::sync::Mutex` (held for a few field updates, never
//! across `.await`), where the policy (FIFO or LIFO, CoDel shedding, deadline drops, eviction by
//! criticality) is applied from the true counts.
//!
//! The word's top bit, `WAITING`, says "someone waits": it is set and cleared only under the
//! lock, and is set exactly while a wait list is non-empty. A fast admission needs it clear (so a
//! newcomer never overtakes a waiter); a release that finds it set goes to the lock and hands the
//! slot straight to the waiter the policy picks (marked `Granted`). The bit and the count share
//! one word, so a release and a request starting to wait cannot miss each other: whichever
//! read-modify-write comes second sees the other's (a waiter that set the bit after a release's
//! decrement finds the free slot and grants it itself).
//!
//! Why not tokio's semaphore: admission is decided synchronously in `call`. Nothing here asks
//! tokio whether it may proceed, so tokio's cooperative budget can never turn free capacity into
//! a refusal (the `Buffer` + `LoadShed` trap).

// The word and the lock are loom's in the loom model (loom_model.rs), so loom explores every
// interleaving of the lock-free path with the locked one.
#[cfg(all(test, backstop_loom))]
use loom::sync::{Mutex, MutexGuard, atomic::AtomicUsize};
#[cfg(not(all(test, backstop_loom)))]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::{Arc, PoisonError};
#[cfg(not(all(test, backstop_loom)))]
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use crate::context::Criticality;
use crate::error::{OverloadReason, Overloaded};
use crate::metrics::names;
use crate::metrics::shard::Sharded;
use crate::timeout::Deadline;

/// CoDel-style shedding and the adaptive LIFO switch (absent for plain backpressure). Each
/// duration is at most a century (the builder clamps it), so adding it to an `Instant` cannot
/// overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shedding {
    /// How long a waiter may wait once the queue is behind.
    pub(crate) target: Duration,
    /// How long the queue must stay non-empty before it counts as behind; also the longest a
    /// waiter may wait while it is not.
    pub(crate) interval: Duration,
    /// When set, waiters past the CoDel bound move to a low-priority list instead of being shed,
    /// and are shed from there once they have waited this long in all.
    pub(crate) sideline: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) limit: usize,
    pub(crate) max_waiting: usize,
    pub(crate) shedding: Option<Shedding>,
}

/// Which end of which list a grant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Fifo,
    Lifo,
    Sideline,
}

/// What `acquire` decided.
pub(crate) enum Admission {
    /// Capacity was free: run now.
    Run(Permit),
    /// Wait for a permit.
    Wait(Ticket),
    /// Refused at once.
    Refused(Overloaded),
}

/// Counts kept under the lock; read by the handles' `stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) admitted: u64,
    pub(crate) queued: u64,
    pub(crate) served_fifo: u64,
    pub(crate) served_lifo: u64,
    pub(crate) served_sideline: u64,
    pub(crate) sidelined: u64,
    pub(crate) shed: u64,
    pub(crate) rejected: u64,
    pub(crate) cancelled: u64,
}

/// The "someone waits" bit of the gate's word; the rest of the word is the count in flight.
const WAITING: usize = 1 << (usize::BITS - 1);
const COUNT: usize = !WAITING;

#[derive(Debug)]
pub(crate) struct Gate {
    config: Config,
    /// `config.limit`, kept below the `WAITING` bit (no process holds 2^63 requests).
    limit: usize,
    /// Requests holding a slot (granted but not yet collected ones included), plus `WAITING`.
    word: AtomicUsize,
    /// Admissions on the lock-free path (the locked ones count in `Totals::admitted`), by
    /// thread: one shared counter would be a second contended line per request.
    fast_admitted: Sharded<1>,
    state: Mutex<State>,
    series: Series,
}

#[derive(Debug)]
struct Series {
    queue_length: Gauge,
    oldest_wait: Gauge,
    behind: Gauge,
    queue_full: Counter,
    shed: Counter,
    /// The same refusals by the refused request's criticality level: `[full, shed][level]`.
    by_level: [[Counter; LEVELS]; 2],
}

impl Series {
    fn register(name: &str) -> Self {
        names::describe_queues();
        let label = names::NAME_LABEL;
        let refused = |reason: OverloadReason| counter!(names::REFUSED, label => name.to_owned(), names::REASON_LABEL => reason.as_str());
        let series = Series {
            queue_length: gauge!(names::QUEUE_LENGTH, label => name.to_owned()),
            oldest_wait: gauge!(names::QUEUE_OLDEST_WAIT_SECONDS, label => name.to_owned()),
            behind: gauge!(names::QUEUE_BEHIND, label => name.to_owned()),
            queue_full: refused(OverloadReason::QueueFull),
            shed: refused(OverloadReason::Shed),
            by_level: [OverloadReason::QueueFull, OverloadReason::Shed].map(|reason| {
                Criticality::ALL.map(|level| {
                    let counter = counter!(
                        names::QUEUE_REFUSED_BY_CRITICALITY,
                        label => name.to_owned(),
                        names::REASON_LABEL => reason.as_str(),
                        names::CRITICALITY_LABEL => level.as_str(),
                    );
                    counter.increment(0);
                    counter
                })
            }),
        };
        // Touch every series so that it reads 0, not missing, before the first request.
        series.queue_length.set(0.0);
        series.oldest_wait.set(0.0);
        series.behind.set(0.0);
        series.queue_full.increment(0);
        series.shed.increment(0);
        series
    }

    /// Counts a request of criticality `level` refused because the queue was full.
    fn full(&self, level: u8) {
        self.queue_full.increment(1);
        self.by_level[0][usize::from(level)].increment(1);
    }

    /// Counts a request of criticality `level` shed (expired, evicted, or late on arrival).
    fn shed(&self, level: u8) {
        self.shed.increment(1);
        self.by_level[1][usize::from(level)].increment(1);
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Main,
    Sideline,
    Granted,
    Shed,
}

#[derive(Debug)]
struct Node {
    prev: usize,
    next: usize,
    place: Place,
    enqueued: Instant,
    deadline: Option<Instant>,
    waker: Option<Waker>,
    /// The request's criticality level (0 lowest): a full queue evicts a lower one for it.
    level: u8,
}

const LEVELS: usize = Criticality::ALL.len();

#[derive(Debug)]
enum Slot {
    Vacant { next_free: usize },
    Taken(Node),
}

/// An intrusive doubly-linked list over the slab: O(1) push, pop at either end, and removal of
/// any waiter (a cancelled future leaves at once, wherever it stands).
#[derive(Debug, Clone, Copy)]
struct List {
    head: usize,
    tail: usize,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    free: usize,
    main: List,
    sideline: List,
    /// When the main list last went from empty to non-empty; `None` while it is empty.
    nonempty_since: Option<Instant>,
    /// Waiters (main list and sideline) at each criticality level.
    waiting_by_level: [usize; LEVELS],
    totals: Totals,
}

impl State {
    fn node(&self, key: usize) -> &Node {
        match &self.slots[key] {
            Slot::Taken(node) => node,
            Slot::Vacant { .. } => unreachable!("ticket points at a vacant slot"),
        }
    }

    fn node_mut(&mut self, key: usize) -> &mut Node {
        match &mut self.slots[key] {
            Slot::Taken(node) => node,
            Slot::Vacant { .. } => unreachable!("ticket points at a vacant slot"),
        }
    }

    fn insert(&mut self, node: Node) -> usize {
        if self.free == NIL {
            self.slots.push(Slot::Taken(node));
            self.slots.len() - 1
        } else {
            let key = self.free;
            self.free = match self.slots[key] {
                Slot::Vacant { next_free } => next_free,
                Slot::Taken(_) => unreachable!("free list points at a taken slot"),
            };
            self.slots[key] = Slot::Taken(node);
            key
        }
    }

    fn remove(&mut self, key: usize) {
        self.slots[key] = Slot::Vacant {
            next_free: self.free,
        };
        self.free = key;
    }

    fn list_mut(&mut self, place: Place) -> &mut List {
        match place {
            Place::Main => &mut self.main,
            Place::Sideline => &mut self.sideline,
            Place::Granted | Place::Shed => unreachable!("not a list"),
        }
    }

    fn push_back(&mut self, key: usize, place: Place, now: Instant) {
        if place == Place::Main && self.main.len == 0 {
            self.nonempty_since = Some(now);
        }
        let tail = self.list_mut(place).tail;
        {
            let node = self.node_mut(key);
            node.place = place;
            node.prev = tail;
            node.next = NIL;
        }
        if tail == NIL {
            self.list_mut(place).head = key;
        } else {
            self.node_mut(tail).next = key;
        }
        let list = self.list_mut(place);
        list.tail = key;
        list.len += 1;
    }

    /// Takes `key` out of whichever list holds it and gives it its new place.
    fn unlink(&mut self, key: usize, new_place: Place) {
        let (prev, next, place) = {
            let node = self.node(key);
            (node.prev, node.next, node.place)
        };
        if prev == NIL {
            self.list_mut(place).head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.list_mut(place).tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
        self.list_mut(place).len -= 1;
        if place == Place::Main && self.main.len == 0 {
            self.nonempty_since = None;
        }
        if matches!(new_place, Place::Granted | Place::Shed) {
            let level = usize::from(self.node(key).level);
            self.waiting_by_level[level] -= 1;
        }
        let node = self.node_mut(key);
        node.prev = NIL;
        node.next = NIL;
        node.place = new_place;
    }

    fn waiting(&self) -> usize {
        self.main.len + self.sideline.len
    }

    /// True when a waiter of a level below `level` waits: a full queue can make room for `level`.
    fn holds_level_below(&self, level: u8) -> bool {
        self.waiting_by_level[..usize::from(level)]
            .iter()
            .any(|&n| n > 0)
    }
}

/// When a waiter must leave its place, and whether it then moves to the sideline or is shed.
enum Expiry {
    Never,
    At(Instant, Place),
}

impl Gate {
    pub(crate) fn new(config: Config, name: &str) -> Self {
        Gate {
            config,
            limit: config.limit.min(COUNT),
            word: AtomicUsize::new(0),
            fast_admitted: Sharded::default(),
            state: Mutex::new(State {
                slots: Vec::new(),
                free: NIL,
                main: List::EMPTY,
                sideline: List::EMPTY,
                nonempty_since: None,
                waiting_by_level: [0; LEVELS],
                totals: Totals::default(),
            }),
            series: Series::register(name),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, but a poisoned lock must not take the
        // server down with it: the counts are still consistent after any early return.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits, queues or refuses one request of criticality `level` (0 lowest, at most 3).
    /// `deadline` is read only when the request must wait, so the fast path (capacity free,
    /// nobody waiting) is one compare-and-swap, no lock and no clock read. When the queue is
    /// full and a waiter of a lower level waits, the oldest waiter of the lowest such level is
    /// shed to make room (sideline first, then the main list), so a full queue never turns away
    /// a critical request while it holds a sheddable one; a queue whose requests are all at one
    /// level never evicts.
    pub(crate) fn acquire_at(
        self: &Arc<Self>,
        deadline: impl FnOnce() -> Option<Deadline>,
        level: u8,
    ) -> Admission {
        if self.try_admit() {
            self.fast_admitted.add(0, 1);
            return Admission::Run(Permit { gate: self.clone() });
        }
        let level = level.min(LEVELS as u8 - 1);
        let mut state = self.lock();
        // Again under the lock: a release may have freed a slot since, and nobody can start
        // waiting while we hold it.
        if self.try_admit() {
            state.totals.admitted += 1;
            drop(state);
            return Admission::Run(Permit { gate: self.clone() });
        }
        let now = Instant::now();
        let full = state.waiting() >= self.config.max_waiting;
        if full && !state.holds_level_below(level) {
            state.totals.rejected += 1;
            self.publish(&state, now);
            drop(state);
            self.series.full(level);
            return Admission::Refused(Overloaded::new(OverloadReason::QueueFull));
        }
        let deadline = match self.config.shedding {
            Some(_) => deadline().map(Deadline::instant),
            None => None,
        };
        if deadline.is_some_and(|d| d <= now) {
            state.totals.shed += 1;
            drop(state);
            self.series.shed(level);
            return Admission::Refused(Overloaded::new(OverloadReason::Shed));
        }
        // Evicted only now that this request is sure to take the place.
        let evicted = if full {
            self.evict_below(&mut state, level)
        } else {
            None
        };
        let key = state.insert(Node {
            prev: NIL,
            next: NIL,
            place: Place::Main,
            enqueued: now,
            deadline,
            waker: None,
            level,
        });
        state.push_back(key, Place::Main, now);
        state.waiting_by_level[usize::from(level)] += 1;
        state.totals.queued += 1;
        let before = self.word.fetch_or(WAITING, AcqRel);
        let mut wake: Vec<Waker> = evicted.into_iter().collect();
        if before & COUNT < self.limit {
            // A release lowered the count after our look and before the bit was up: it did not
            // see us, so the free slot is granted here (to us, or to whom the policy picks).
            self.grant_next(&mut state, now, &mut wake);
            self.settle(&state);
        }
        self.publish(&state, now);
        drop(state);
        for waker in wake {
            waker.wake();
        }
        Admission::Wait(Ticket {
            gate: self.clone(),
            key,
        })
    }

    /// Takes a slot if one is free and nobody waits.
    fn try_admit(&self) -> bool {
        let mut word = self.word.load(Relaxed);
        // `WAITING` set makes `word` exceed any limit: one comparison checks both.
        while word < self.limit {
            match self
                .word
                .compare_exchange_weak(word, word + 1, AcqRel, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
        false
    }

    fn in_flight(&self) -> usize {
        self.word.load(Acquire) & COUNT
    }

    /// Lowers `WAITING` once the wait lists are empty: the fast path is open again. Called under
    /// the lock after anything that may empty them.
    fn settle(&self, state: &State) {
        if state.waiting() == 0 {
            self.word.fetch_and(COUNT, AcqRel);
        }
    }

    /// Sheds the oldest waiter of the lowest level below `level`, if any waits; returns its
    /// waker, to wake once the lock is released. Only a full queue with a lower level waiting
    /// pays for the scan (at most `max_waiting` nodes); a queue of one level never scans.
    fn evict_below(&self, state: &mut State, level: u8) -> Option<Waker> {
        let victim_level = (0..level).find(|&l| state.waiting_by_level[usize::from(l)] > 0)?;
        let mut key = NIL;
        for list in [state.sideline, state.main] {
            let mut at = list.head;
            while at != NIL {
                let node = state.node(at);
                if node.level == victim_level {
                    key = at;
                    break;
                }
                at = node.next;
            }
            if key != NIL {
                break;
            }
        }
        if key == NIL {
            return None;
        }
        state.unlink(key, Place::Shed);
        state.totals.shed += 1;
        self.series.shed(state.node(key).level);
        // A waiter that never polled has no waker yet; it finds `Shed` at its first poll.
        state.node_mut(key).waker.take()
    }

    /// Where the waiter `key` stands in time: when it expires, and what happens then.
    fn expiry(&self, state: &State, key: usize) -> Expiry {
        let Some(shedding) = self.config.shedding else {
            return Expiry::Never;
        };
        let node = state.node(key);
        let (codel, next_place) = match node.place {
            Place::Main => {
                // While this waiter is in the main list the list is not empty, so the moment the
                // queue turns "behind" is fixed: nonempty_since + interval. Before it the bound is
                // `interval`, after it `target`; the first instant past the bound is below.
                let since = state.nonempty_since.unwrap_or(node.enqueued);
                let behind_at = since + shedding.interval;
                let codel = behind_at.max(node.enqueued + shedding.target);
                let next = match shedding.sideline {
                    Some(_) => Place::Sideline,
                    None => Place::Shed,
                };
                (codel, next)
            }
            Place::Sideline => {
                let total = shedding.sideline.unwrap_or(shedding.interval);
                (node.enqueued + total, Place::Shed)
            }
            Place::Granted | Place::Shed => return Expiry::Never,
        };
        match node.deadline {
            Some(d) if d <= codel => Expiry::At(d, Place::Shed),
            _ => Expiry::At(codel, next_place),
        }
    }

    /// Moves the waiter on if it has expired by `now`: to the sideline, or out with `Shed`.
    /// Returns true if it was shed.
    fn expire_if_due(&self, state: &mut State, key: usize, now: Instant) -> bool {
        loop {
            match self.expiry(state, key) {
                Expiry::At(at, next) if at <= now => {
                    state.unlink(key, next);
                    if next == Place::Shed {
                        state.totals.shed += 1;
                        self.series.shed(state.node(key).level);
                        return true;
                    }
                    state.totals.sidelined += 1;
                    state.push_back(key, Place::Sideline, now);
                    // Check again: the sideline bound may have passed too.
                }
                _ => return false,
            }
        }
    }

    /// True when the main list has not been empty for `interval`: the queue is behind and serves
    /// the newest waiter first.
    fn behind(&self, state: &State, now: Instant) -> bool {
        match (self.config.shedding, state.nonempty_since) {
            (Some(s), Some(since)) => now.saturating_duration_since(since) >= s.interval,
            _ => false,
        }
    }

    pub(crate) fn is_behind(&self) -> bool {
        let state = self.lock();
        self.behind(&state, Instant::now())
    }

    /// Returns a permit: lowers the count, and when someone waits, hands the slot straight to
    /// the next waiter the policy picks.
    fn release(&self) {
        if self.word.fetch_sub(1, AcqRel) & WAITING == 0 {
            return;
        }
        // Nobody can take the freed slot but a waiter: admissions stay off while `WAITING` is up.
        let mut wake = Vec::new();
        let mut state = self.lock();
        if state.waiting() > 0 {
            let now = Instant::now();
            self.grant_next(&mut state, now, &mut wake);
            self.publish(&state, now);
        }
        self.settle(&state);
        drop(state);
        for waker in wake {
            waker.wake();
        }
    }

    /// Grants free slots to waiters, in the policy's order. Under the lock with `WAITING` up, so
    /// the count can only fall meanwhile (a release on its way here), never rise.
    fn grant_next(&self, state: &mut State, now: Instant, wake: &mut Vec<Waker>) {
        while self.in_flight() < self.limit {
            let (key, from) = if state.main.len > 0 {
                if self.behind(state, now) {
                    (state.main.tail, Pick::Lifo)
                } else {
                    (state.main.head, Pick::Fifo)
                }
            } else if state.sideline.len > 0 {
                // Everyone on the sideline is old; the newest of them is the likeliest to still
                // have a caller.
                (state.sideline.tail, Pick::Sideline)
            } else {
                return;
            };
            if self.expire_if_due(state, key, now) {
                wake.extend(state.node_mut(key).waker.take());
                continue;
            }
            if state.node(key).place == Place::Sideline && from != Pick::Sideline {
                // It just moved to the sideline; pick again.
                continue;
            }
            match from {
                Pick::Lifo => state.totals.served_lifo += 1,
                Pick::Fifo => state.totals.served_fifo += 1,
                Pick::Sideline => state.totals.served_sideline += 1,
            }
            state.unlink(key, Place::Granted);
            self.word.fetch_add(1, AcqRel);
            state.totals.admitted += 1;
            wake.extend(state.node_mut(key).waker.take());
        }
    }

    /// Refreshes the gauges. Called on every slow-path event (arrival that waits, refusal,
    /// grant, shed, cancel), never on the fast path.
    fn publish(&self, state: &State, now: Instant) {
        self.series.queue_length.set(state.waiting() as f64);
        self.series.oldest_wait.set(
            self.oldest_enqueued(state)
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
        );
        self.series
            .behind
            .set(if self.behind(state, now) { 1.0 } else { 0.0 });
    }

    fn oldest_enqueued(&self, state: &State) -> Option<Instant> {
        let front = |list: List| (list.head != NIL).then(|| state.node(list.head).enqueued);
        match (front(state.main), front(state.sideline)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let state = self.lock();
        let now = Instant::now();
        let t = state.totals;
        QueueStats {
            in_flight: self.in_flight(),
            waiting: state.waiting(),
            sidelined: state.sideline.len,
            oldest_wait: self
                .oldest_enqueued(&state)
                .map(|at| now.saturating_duration_since(at)),
            behind: self.behind(&state, now),
            admitted: t.admitted + self.fast_admitted.sums()[0],
            queued: t.queued,
            served_fifo: t.served_fifo,
            served_lifo: t.served_lifo,
            served_sideline: t.served_sideline,
            moved_to_sideline: t.sidelined,
            shed: t.shed,
            rejected: t.rejected,
            cancelled: t.cancelled,
        }
    }
}

/// A reading of a queue: the state now, and totals since the layer was built. The wait lists
/// and their totals are read under the queue's lock; the count in flight and the admissions
/// made without waiting are atomics read at the same moment, so a request admitted on another
/// thread meanwhile may or may not be in them (once the queue is quiet, the reading is exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Requests holding a slot now (running, or with a response body still streaming).
    pub in_flight: usize,
    /// Requests waiting now (main list and sideline).
    pub waiting: usize,
    /// Of those, the ones on the sideline.
    pub sidelined: usize,
    /// How long the oldest waiter has waited, if anyone waits.
    pub oldest_wait: Option<Duration>,
    /// True while the queue is behind and serves the newest waiter first.
    pub behind: bool,
    /// Requests given a slot, at once or after waiting.
    pub admitted: u64,
    /// Requests that had to wait.
    pub queued: u64,
    /// Waiters served oldest-first (healthy queue).
    pub served_fifo: u64,
    /// Waiters served newest-first (queue behind).
    pub served_lifo: u64,
    /// Waiters served from the sideline.
    pub served_sideline: u64,
    /// Waiters moved to the sideline.
    pub moved_to_sideline: u64,
    /// Requests refused with `Shed`: deadline passed or waited past the CoDel bound.
    pub shed: u64,
    /// Requests refused with `QueueFull`.
    pub rejected: u64,
    /// Waiters whose future was dropped while they waited.
    pub cancelled: u64,
}

impl QueueStats {
    /// Every request offered so far has exactly one of these outcomes (or is still waiting):
    /// `admitted + shed + rejected + cancelled + waiting`.
    pub fn offered(&self) -> u64 {
        self.admitted + self.shed + self.rejected + self.cancelled + self.waiting as u64
    }
}

/// One slot of the concurrency limit, held while a request runs (and, with
/// [`UntilBodyEnd`](super::UntilBodyEnd), while its response body streams). Dropping it hands the
/// slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A place in the wait list. Dropping it leaves the list at once, and gives back the permit if
/// one had been granted but not yet collected.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    key: usize,
}

/// What a poll of a ticket found.
pub(crate) enum Turn {
    /// A permit is ours.
    Granted(Permit),
    /// Shed while waiting.
    Shed,
    /// Still waiting; poll again by this instant at the latest (`None`: only when woken).
    Wait(Option<Instant>),
}

impl Ticket {
    /// Checks the ticket, registers `cx`'s waker, and tells when its time runs out.
    pub(crate) fn poll_turn(&mut self, cx: &mut Context<'_>) -> Turn {
        let gate = &self.gate;
        let mut state = gate.lock();
        match state.node(self.key).place {
            Place::Granted => {
                state.remove(self.key);
                self.key = NIL;
                return Turn::Granted(Permit { gate: gate.clone() });
            }
            Place::Shed => {
                state.remove(self.key);
                self.key = NIL;
                return Turn::Shed;
            }
            Place::Main | Place::Sideline => {}
        }
        let now = Instant::now();
        if gate.expire_if_due(&mut state, self.key, now) {
            state.remove(self.key);
            self.key = NIL;
            gate.settle(&state);
            gate.publish(&state, now);
            return Turn::Shed;
        }
        let node = state.node_mut(self.key);
        match &node.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => node.waker = Some(cx.waker().clone()),
        }
        match gate.expiry(&state, self.key) {
            Expiry::At(at, _) => Turn::Wait(Some(at)),
            Expiry::Never => Turn::Wait(None),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.key == NIL {
            return;
        }
        let gate = &self.gate;
        let mut state = gate.lock();
        match state.node(self.key).place {
            Place::Main | Place::Sideline => {
                state.unlink(self.key, Place::Shed);
                state.remove(self.key);
                state.totals.cancelled += 1;
                gate.settle(&state);
                gate.publish(&state, Instant::now());
            }
            Place::Shed => state.remove(self.key),
            Place::Granted => {
                // Granted but never collected (it counts as admitted): the slot goes to the
                // next waiter.
                state.remove(self.key);
                drop(state);
                gate.release();
            }
        }
    }
}
