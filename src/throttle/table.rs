//! [`KeyTable`]: the fixed-size, set-associative table of client rate states behind
//! [`ClientQuotas`](super::ClientQuotas).
//!
//! A client is stored as a 64-bit keyed fingerprint of its key, never the key itself, so an entry
//! costs the same 16 bytes whether the key was 3 bytes or 1 KiB. The table is allocated once at
//! its bound and never grows. It is split into sets of [`WAYS`] slots; a fingerprint belongs to
//! one set, and a new client that finds its set full replaces the set's weakest entry:
//!
//! 1. an empty slot;
//! 2. else a slot whose bucket is full again (dropping it changes no decision: its next request
//!    would find the same state as a client never seen), a client seen once first;
//! 3. else a client seen only once, else a returning one; among them the one closest to a full
//!    bucket (the least state lost): its state is lost, so it gets a fresh bucket.
//!
//! No request is ever refused because of another client: a client is refused only by its own
//! bucket. A flood of new keys therefore cannot lock anyone out; at worst it makes the table
//! forget a client, which then starts again from a full bucket. A flood of one-shot keys replaces
//! itself and leaves alone the clients that keep coming back, the busy ones and the ones over
//! their quota included (forgetting those would let them out of it; being furthest from a full
//! bucket, they are the last to go).
//!
//! # No lock for a known client
//! A known client's request takes no lock: it finds its fingerprint among its set's 8, reads its
//! state and commits the new one with a compare-and-swap. Only a new client
//! (an insertion, maybe a replacement) and a sweep take the set's stripe lock. Two things keep a
//! lock-free reader honest while a writer gives its slot to another client:
//! - the writer clears the slot's fingerprint before it touches the state, and the reader checks
//!   the fingerprint again after reading the state (a seqlock's two reads), so a state read is
//!   always its own client's, and a refusal is always decided on the client's own bucket;
//! - the state word holds `tat ^ fingerprint`, so a compare-and-swap prepared for one client
//!   fails on the word of any other (they would have to agree on all 64 bits: as likely as a
//!   fingerprint collision, which the table accepts anyway).
//!
//! "Seen again" is the state word's top bit (a theoretical arrival time stays below 2⁶³ ns, 292
//! years), set by the compare-and-swap a returning request makes anyway: a known client's request
//! writes one word, on the line of its fingerprint (one line of the set's two, or both when it
//! sits in the second half).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use Ordering::{Acquire, Relaxed, Release};

/// Slots per set: the candidates a new client can replace. Eight give the replacement choice a
/// sample large enough that a flood of one-shot keys nearly always finds one of its own to
/// replace.
pub(super) const WAYS: usize = 8;

/// Locks guarding insertions and sweeps: enough that new clients rarely meet on one.
const STRIPES: usize = 64;

/// The most clients a table may hold: 2²⁴ slots of 16 bytes, 256 MiB.
pub(super) const MAX_KEYS: usize = 1 << 24;

/// The state word's flag for a client seen more than once.
const RETURNING: u64 = 1 << 63;

/// One set: 8 slots on two cache lines, 128 bytes, 16 per client. A client's fingerprint and
/// state share a line, and a client takes the first free slot, so in a table that is not full
/// most lookups touch one line.
#[derive(Default)]
#[repr(C, align(64))]
struct Set {
    slots: [Slot; WAYS],
}

#[derive(Default)]
struct Slot {
    /// 0 marks an empty slot (a real fingerprint of 0 is stored as 1). Written only under the
    /// set's stripe lock.
    fp: AtomicU64,
    /// The GCRA theoretical arrival time (nanoseconds on the quotas' clock, 0 for none), with
    /// [`RETURNING`] once the client came back, XOR the slot's fingerprint.
    state: AtomicU64,
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
    sets: Box<[Set]>,
    stripes: Box<[Mutex<()>]>,
    /// Slots used in each set (8, or fewer for a table smaller than one set).
    ways: usize,
}

impl KeyTable {
    /// A table of at least `max_keys` slots (`1..=MAX_KEYS`), rounded up to whole sets.
    pub(super) fn new(max_keys: usize) -> Self {
        let ways = max_keys.clamp(1, WAYS);
        let sets = max_keys.div_ceil(ways).max(1);
        KeyTable {
            sets: (0..sets).map(|_| Set::default()).collect(),
            stripes: (0..STRIPES.min(sets)).map(|_| Mutex::new(())).collect(),
            ways,
        }
    }

    /// Slots in the table: the most clients it holds.
    pub(super) fn capacity(&self) -> usize {
        self.sets.len() * self.ways
    }

    /// The index of `fp`'s set.
    #[inline]
    fn locate(&self, fp: u64) -> usize {
        // The fingerprint is a keyed hash, so a client cannot choose its set; a multiply and a
        // shift map it onto the sets (a 64-bit division costs 10 times more).
        ((u128::from(fp) * self.sets.len() as u128) >> 64) as usize
    }

    /// Starts loading `fp`'s set (its first line, where a client of a table that is not full
    /// is) without waiting for it.
    #[inline]
    pub(super) fn touch(&self, fp: u64) {
        let _ = self.sets[self.locate(fp.max(1))].slots[0].fp.load(Relaxed);
    }

    /// Runs `decide` on `fp`'s state (`None` for a client not tracked) and stores what it returns
    /// (`Ok(new_tat)`); `Err(wait)` leaves the state as it was. A client not tracked is added.
    #[inline]
    pub(super) fn check(
        &self,
        fp: u64,
        now: u64,
        decide: impl Fn(Option<u64>) -> Result<u64, u64>,
    ) -> (Result<(), u64>, Change) {
        let fp = fp.max(1);
        let index = self.locate(fp);
        let set = &self.sets[index];
        if let Some(decision) = self.known(set, fp, &decide) {
            return (decision, Change::None);
        }
        self.insert(set, index % self.stripes.len(), fp, now, &decide)
    }

    /// The lock-free path: `None` when `fp` is not in its set (or its slot was just taken).
    #[inline(always)]
    fn known(
        &self,
        set: &Set,
        fp: u64,
        decide: &impl Fn(Option<u64>) -> Result<u64, u64>,
    ) -> Option<Result<(), u64>> {
        let i = (0..self.ways).find(|&i| set.slots[i].fp.load(Acquire) == fp)?;
        loop {
            let word = set.slots[i].state.load(Relaxed);
            // Pairs with the writer's fence: if `word` is a replacing writer's, the fingerprint
            // read below is no longer `fp`.
            fence(Acquire);
            if set.slots[i].fp.load(Relaxed) != fp {
                return None;
            }
            let tat = (word ^ fp) & !RETURNING;
            let next = match decide((tat != 0).then_some(tat)) {
                Ok(next) => next.min(!RETURNING) | RETURNING,
                Err(wait) => {
                    // A refused client came back too (a client over its quota is one to keep):
                    // mark it once. A failed exchange means the word moved on, marked by then.
                    if (word ^ fp) & RETURNING == 0 {
                        let _ = set.slots[i].state.compare_exchange(
                            word,
                            word ^ RETURNING,
                            Relaxed,
                            Relaxed,
                        );
                    }
                    return Some(Err(wait));
                }
            };
            if set.slots[i]
                .state
                .compare_exchange_weak(word, next ^ fp, Relaxed, Relaxed)
                .is_ok()
            {
                return Some(Ok(()));
            }
        }
    }

    /// The locked path of a client not found: finds it again (another request may have added
    /// it), else gives it the set's weakest slot.
    #[cold]
    fn insert(
        &self,
        set: &Set,
        stripe: usize,
        fp: u64,
        now: u64,
        decide: &impl Fn(Option<u64>) -> Result<u64, u64>,
    ) -> (Result<(), u64>, Change) {
        let _guard = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(decision) = self.known(set, fp, decide) {
            return (decision, Change::None);
        }
        let raw = |i: usize| set.slots[i].state.load(Relaxed) ^ set.slots[i].fp.load(Relaxed);
        let tat_of = |i: usize| raw(i) & !RETURNING;
        let victim = (0..self.ways)
            .min_by_key(|&i| {
                let tat = tat_of(i);
                // Empty first, then full buckets, then the rest; seen once before seen again,
                // then the closest to a full bucket.
                (
                    set.slots[i].fp.load(Relaxed) != 0,
                    tat > now,
                    raw(i) & RETURNING != 0,
                    tat,
                )
            })
            .expect("a set has at least one slot");
        let change = if set.slots[victim].fp.load(Relaxed) == 0 {
            Change::Added
        } else {
            Change::Replaced {
                lost: tat_of(victim) > now,
            }
        };
        // Take the slot from lock-free readers first (they check the fingerprint after reading
        // the state), then write the new client's state, then publish its fingerprint.
        set.slots[victim].fp.store(0, Relaxed);
        fence(Release);
        let decision = decide(None);
        let tat = decision.unwrap_or(0).min(!RETURNING);
        set.slots[victim].state.store(tat ^ fp, Relaxed);
        set.slots[victim].fp.store(fp, Release);
        (decision.map(drop), change)
    }

    /// Empties every slot whose bucket is full again at `now`; returns how many.
    pub(super) fn sweep(&self, now: u64) -> usize {
        let mut dropped = 0;
        for (s, stripe) in self.stripes.iter().enumerate() {
            let _guard = stripe.lock().unwrap_or_else(|e| e.into_inner());
            for set in self.sets.iter().skip(s).step_by(self.stripes.len()) {
                for i in 0..self.ways {
                    let fp = set.slots[i].fp.load(Relaxed);
                    if fp != 0 && (set.slots[i].state.load(Relaxed) ^ fp) & !RETURNING <= now {
                        set.slots[i].fp.store(0, Relaxed);
                        fence(Release);
                        set.slots[i].state.store(0, Relaxed);
                        dropped += 1;
                    }
                }
            }
        }
        dropped
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
        assert_eq!(std::mem::size_of::<Set>(), 16 * WAYS);
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

    #[test]
    fn a_known_client_sees_its_own_state_and_a_refusal_changes_nothing() {
        let t = KeyTable::new(100);
        // The state handed to `decide` is the one stored, whatever the fingerprint's bits.
        for fp in [1u64, 7, u64::MAX, 0x8000_0000_0000_0000] {
            assert_eq!(
                t.check(fp, 0, |tat| Ok(tat.map_or(50, |t| t + 1))).0,
                Ok(())
            );
            assert_eq!(t.check(fp, 0, |tat| Err(tat.unwrap())).0, Err(50));
            assert_eq!(t.check(fp, 0, |tat| Err(tat.unwrap())).0, Err(50));
            assert_eq!(t.check(fp, 0, |tat| Ok(tat.unwrap() + 1)).0, Ok(()));
            assert_eq!(t.check(fp, 0, |tat| Err(tat.unwrap())).0, Err(51));
        }
    }

    /// Readers of known clients race writers that keep replacing slots of the same sets: every
    /// known client's state must stay exactly its own (each request adds 1 to it), and no
    /// reader may ever see another client's state.
    #[test]
    fn lock_free_readers_never_touch_a_slot_given_to_another_client() {
        // One set of 8: four known clients, the other four slots churned by new keys whose
        // buckets are full (so they, not the known clients, are replaced).
        let t = KeyTable::new(8);
        let known: Vec<u64> = (1..=4).map(|k| k * 0x1111_1111_1111_1111).collect();
        for &fp in &known {
            // Far in the future, so a known client's bucket is never full again.
            assert!(t.check(fp, 0, |_| Ok(1 << 40)).0.is_ok());
            for _ in 0..10 {
                assert!(t.check(fp, 0, |tat| Ok(tat.unwrap() + 1)).0.is_ok());
            }
        }
        let per_thread = 20_000u64;
        std::thread::scope(|s| {
            for &fp in &known {
                let t = &t;
                s.spawn(move || {
                    for _ in 0..per_thread {
                        let (d, change) = t.check(fp, 0, |tat| {
                            let tat = tat.expect("a known client has a state");
                            assert!(
                                ((1 << 40)..(1 << 40) + 1_000_000).contains(&tat),
                                "{fp:#x} saw a state that is not its own: {tat}"
                            );
                            Ok(tat + 1)
                        });
                        assert!(d.is_ok());
                        assert_eq!(change, Change::None, "{fp:#x} was forgotten");
                    }
                });
            }
            let t = &t;
            s.spawn(move || {
                for n in 0..per_thread {
                    // New clients whose bucket is full at once: they replace each other.
                    let _ = t.check(0xdead_0000 + n, 10, |_| Ok(5));
                }
            });
        });
        for &fp in &known {
            let (d, _) = t.check(fp, 0, |tat| Err(tat.unwrap()));
            assert_eq!(d, Err((1 << 40) + 10 + per_thread), "{fp:#x}");
        }
    }
}
