//! [`KeyTable`]: the fixed-size, set-associative table of client rate states behind
//! [`ClientQuotas`](super::ClientQuotas).
//!
//! A client is stored as a 64-bit keyed fingerprint of its key, never the key itself, so an entry
//! costs the same 24 bytes whether the key was 3 bytes or 1 KiB. The table is allocated once at
//! its bound and never grows. It is split into sets of [`WAYS`] slots; a fingerprint belongs to
//! one set, and a new client that finds its set full replaces the set's weakest entry:
//!
//! 1. an empty slot;
//! 2. else a slot whose bucket is full again (dropping it changes no decision: its next request
//!    would find the same state as a client never seen), the least used first;
//! 3. else the least used slot, the oldest first: its state is lost, so it gets a fresh bucket.
//!
//! No request is ever refused because of another client: a client is refused only by its own
//! bucket. A flood of new keys therefore cannot lock anyone out; at worst it makes the table
//! forget a client, which then starts again from a full bucket. "Least used" counts requests, so
//! a flood of one-shot keys (1 each) replaces itself and leaves alone the clients that keep
//! coming back, the busy ones and the ones over their quota included (forgetting those would let
//! them out of it).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Slots per set: the candidates a new client can replace. Eight keeps a set in three cache
/// lines and gives the replacement choice a sample large enough that a flood of one-shot keys
/// nearly always finds one of its own to replace.
pub(super) const WAYS: usize = 8;

/// Locks guarding the sets: enough that concurrent requests rarely meet on one.
const STRIPES: usize = 64;

/// The most clients a table may hold: 2²⁴ slots of 24 bytes, 384 MiB.
pub(super) const MAX_KEYS: usize = 1 << 24;

/// One client: its fingerprint, its GCRA theoretical arrival time (nanoseconds on the quotas'
/// clock, 0 for none) and how many requests it made while tracked.
#[derive(Default)]
struct Slot {
    /// 0 marks an empty slot (a real fingerprint of 0 is stored as 1).
    fp: u64,
    tat: AtomicU64,
    hits: AtomicU32,
}

/// What [`KeyTable::check`] did besides deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// The client was tracked already.
    None,
    /// It took an empty slot: one more client tracked.
    Added,
    /// It replaced a client; `lost` when that client's bucket was not full (its state is gone).
    Replaced { lost: bool },
}

pub(super) struct KeyTable {
    stripes: Box<[RwLock<Box<[Slot]>>]>,
    /// Sets in the whole table.
    sets: u64,
    ways: usize,
}

impl KeyTable {
    /// A table of at least `max_keys` slots (`1..=MAX_KEYS`), rounded up to whole sets.
    pub(super) fn new(max_keys: usize) -> Self {
        let ways = max_keys.clamp(1, WAYS);
        let sets = max_keys.div_ceil(ways).max(1);
        let stripes = (0..STRIPES)
            .map(|i| {
                // Sets i, i + STRIPES, i + 2·STRIPES, ... live in stripe i.
                let n = sets / STRIPES + usize::from(i < sets % STRIPES);
                RwLock::new((0..n * ways).map(|_| Slot::default()).collect())
            })
            .collect();
        KeyTable {
            stripes,
            sets: sets as u64,
            ways,
        }
    }

    /// Slots in the table: the most clients it holds.
    pub(super) fn capacity(&self) -> usize {
        self.sets as usize * self.ways
    }

    /// Where `fp`'s set is: its stripe and its first slot there.
    fn locate(&self, fp: u64) -> (&RwLock<Box<[Slot]>>, usize) {
        // The fingerprint is a keyed hash, so its low bits spread clients evenly and a client
        // cannot choose its set.
        let set = (fp % self.sets) as usize;
        (&self.stripes[set % STRIPES], (set / STRIPES) * self.ways)
    }

    /// Runs `decide` on `fp`'s state (`None` for a client not tracked) and stores what it returns
    /// (`Ok(new_tat)`); `Err(wait)` leaves the state as it was. A client not tracked is added.
    pub(super) fn check(
        &self,
        fp: u64,
        now: u64,
        decide: impl Fn(Option<u64>) -> Result<u64, u64>,
    ) -> (Result<(), u64>, Change) {
        let fp = fp.max(1);
        let (stripe, base) = self.locate(fp);
        {
            let slots = stripe.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots[base..base + self.ways].iter().find(|s| s.fp == fp) {
                return (update(slot, &decide), Change::None);
            }
        }
        let mut slots = stripe.write().unwrap_or_else(|e| e.into_inner());
        let set = &mut slots[base..base + self.ways];
        // Another request of the same client may have added it while the lock was free.
        if let Some(slot) = set.iter().find(|s| s.fp == fp) {
            return (update(slot, &decide), Change::None);
        }
        let victim = set
            .iter_mut()
            .min_by_key(|s| {
                let tat = s.tat.load(Relaxed);
                // Empty first, then full buckets, then the rest; the least used, then the oldest.
                (s.fp != 0, tat > now, s.hits.load(Relaxed), tat)
            })
            .expect("a set has at least one slot");
        let change = if victim.fp == 0 {
            Change::Added
        } else {
            Change::Replaced {
                lost: victim.tat.load(Relaxed) > now,
            }
        };
        victim.fp = fp;
        victim.tat.store(0, Relaxed);
        victim.hits.store(0, Relaxed);
        (update(victim, &decide), change)
    }

    /// Empties every slot whose bucket is full again at `now`; returns how many.
    pub(super) fn sweep(&self, now: u64) -> usize {
        let mut dropped = 0;
        for stripe in self.stripes.iter() {
            let mut slots = stripe.write().unwrap_or_else(|e| e.into_inner());
            for slot in slots.iter_mut().filter(|s| s.fp != 0) {
                if *slot.tat.get_mut() <= now {
                    *slot = Slot::default();
                    dropped += 1;
                }
            }
        }
        dropped
    }
}

/// Counts the request and applies the decision with a compare-and-swap loop, as governor's
/// in-memory state does: concurrent requests of one client hold only a read lock.
fn update(slot: &Slot, decide: &impl Fn(Option<u64>) -> Result<u64, u64>) -> Result<(), u64> {
    if slot.hits.load(Relaxed) < u32::MAX {
        slot.hits.fetch_add(1, Relaxed);
    }
    let mut prev = slot.tat.load(Relaxed);
    loop {
        let next = decide((prev != 0).then_some(prev))?;
        match slot.tat.compare_exchange_weak(prev, next, Relaxed, Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => prev = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admit everything, one nanosecond per request.
    fn admit(now: u64) -> impl Fn(Option<u64>) -> Result<u64, u64> {
        move |tat| Ok(tat.unwrap_or(now).max(now) + 1)
    }

    #[test]
    fn geometry_covers_max_keys() {
        for n in [1, 3, 8, 9, 100, 100_000] {
            let t = KeyTable::new(n);
            assert!(t.capacity() >= n && t.capacity() < n + WAYS, "{n}");
        }
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn one_shot_keys_replace_each_other_not_a_returning_client() {
        // One set of 8: a client seen 3 times, then 1,000 one-shot keys whose buckets are not
        // full yet (tat far in the future).
        let t = KeyTable::new(8);
        let busy = |_: Option<u64>| Ok(1_000_000);
        for _ in 0..3 {
            assert!(t.check(42, 0, busy).0.is_ok());
        }
        for fp in 1000..2000 {
            assert!(t.check(fp, 0, busy).0.is_ok());
        }
        let (_, change) = t.check(42, 0, busy);
        assert_eq!(change, Change::None, "the returning client was kept");
    }

    #[test]
    fn full_buckets_are_replaced_first_and_sweeps_empty_them() {
        let t = KeyTable::new(2);
        assert_eq!(t.check(1, 0, |_| Ok(100)).1, Change::Added); // full again at 100 ns
        assert_eq!(t.check(2, 0, |_| Ok(1_000)).1, Change::Added);
        assert_eq!(t.check(2, 0, |_| Ok(1_000)).1, Change::None);
        let (_, change) = t.check(3, 200, admit(200));
        assert_eq!(change, Change::Replaced { lost: false });
        assert_eq!(t.check(2, 200, admit(200)).1, Change::None);
        assert_eq!(t.sweep(10_000), 2);
        assert_eq!(t.check(2, 10_000, admit(10_000)).1, Change::Added);
    }
}
