//! Per-thread shards for counters that many threads bump. Up to `SHARDS − 1` live threads each
//! own a shard (claimed at a thread's first count, given back when it exits): they add with a
//! plain load and store, no locked instruction and no cache line shared with another writer.
//! Further threads share the last shard and add atomically. Readers add the shards up.
//!
//! Where a reader needs several counters of one event together (the meter's departure: its
//! departure word, closed area, latency and outcome), the writer brackets its adds
//! ([`Sharded::add_all_consistent_at`]) and the reader retries a shard until it read no bracket
//! in progress ([`Sharded::consistent_sums`]): a seqlock, with plain stores and fences on an
//! owned shard, `fetch_add`s on the shared one. Counters that are read one at a time pay
//! nothing for it.
//!
//! In the loom models (`cfg(backstop_loom)`) the counters are loom's atomics, so loom explores
//! the interleavings of the counts, and a loom thread takes the next shard at its first count
//! (threads run as coroutines there, so the OS thread-locals would be one for all of them).

#[cfg(not(all(test, backstop_loom)))]
use std::cell::Cell;
#[cfg(not(all(test, backstop_loom)))]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

#[cfg(all(test, backstop_loom))]
use loom::sync::atomic::{AtomicU64, fence};
#[cfg(not(all(test, backstop_loom)))]
use std::sync::atomic::{AtomicU64, fence};

/// Shards per sharded value: a power of two (4 in the loom models, to keep them small).
pub(crate) const SHARDS: usize = if cfg!(all(test, backstop_loom)) { 4 } else { 8 };

/// The shard threads share once every other shard has its owner.
pub(crate) const SHARED: usize = SHARDS - 1;

/// Bit `i` set while a live thread owns shard `i`.
#[cfg(not(all(test, backstop_loom)))]
static OWNED: AtomicUsize = AtomicUsize::new(0);

/// Gives the thread's claim on a shard back when the thread exits, so that threads that come
/// and go (a blocking pool's) do not use the owned shards up.
#[cfg(not(all(test, backstop_loom)))]
struct Owner;

#[cfg(not(all(test, backstop_loom)))]
impl Drop for Owner {
    fn drop(&mut self) {
        // Whatever counts this thread still makes while exiting go to the shared shard.
        let i = INDEX.try_with(|c| c.replace(SHARED)).unwrap_or(SHARED);
        if i < SHARED {
            // Release: the next owner sees every count this thread stored.
            OWNED.fetch_and(!(1 << i), Release);
        }
    }
}

#[cfg(not(all(test, backstop_loom)))]
thread_local! {
    /// The thread's shard, `usize::MAX` before its first count. Apart from `OWNER`, whose
    /// destructor the claim needs, because a thread-local without one is read with a plain
    /// load: this is read at every count.
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    static OWNER: Owner = const { Owner };
}

#[cfg(not(all(test, backstop_loom)))]
fn claim() -> usize {
    let mut owned = OWNED.load(Relaxed);
    loop {
        let free = !owned & ((1 << SHARED) - 1);
        if free == 0 {
            return SHARED;
        }
        let i = free.trailing_zeros() as usize;
        // Acquire: this thread sees every count the shard's last owner stored.
        match OWNED.compare_exchange_weak(owned, owned | (1 << i), Acquire, Relaxed) {
            Ok(_) => return i,
            Err(now) => owned = now,
        }
    }
}

/// The calling thread's shard, claimed on its first call: its own below [`SHARED`].
#[cfg(not(all(test, backstop_loom)))]
#[inline]
pub(crate) fn shard_index() -> usize {
    match INDEX.try_with(Cell::get) {
        Ok(i) if i != usize::MAX => i,
        _ => first_count(),
    }
}

#[cfg(not(all(test, backstop_loom)))]
#[cold]
fn first_count() -> usize {
    // The destructor that gives the claim back is registered first; a thread too far into its
    // exit to register one shares.
    let i = if OWNER.try_with(|_| ()).is_ok() {
        claim()
    } else {
        SHARED
    };
    let _ = INDEX.try_with(|c| c.set(i));
    i
}

#[cfg(all(test, backstop_loom))]
pub(crate) use self::model::{shard_index, use_shared_shard};

/// The loom models' shards: each loom thread takes the next one at its first count (no claim to
/// give back: a model's threads all end with it), the last one shared.
#[cfg(all(test, backstop_loom))]
mod model {
    use super::SHARED;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    loom::thread_local! {
        static INDEX: Cell<usize> = Cell::new(usize::MAX);
    }
    loom::lazy_static! {
        // Reset for every execution; the schedule decides the order of first counts.
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }

    pub(crate) fn shard_index() -> usize {
        INDEX.with(|c| {
            if c.get() == usize::MAX {
                c.set(NEXT.fetch_add(1, Relaxed).min(SHARED));
            }
            c.get()
        })
    }

    /// Puts the calling loom thread on the shared shard (atomic adds) from now on.
    pub(crate) fn use_shared_shard() {
        INDEX.with(|c| c.set(SHARED));
    }
}

/// `N` counters of one thread's shard, 128-byte aligned: two shards never share a cache line,
/// nor the pair of lines an adjacent-line prefetcher pulls together.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Counters<const N: usize> {
    counts: [AtomicU64; N],
    /// Bracketed writes begun and ended on this shard (see [`Sharded::add_all_consistent_at`]):
    /// equal while none is in progress. In the padding for every `N` the crate uses (≤ 14).
    begun: AtomicU64,
    ended: AtomicU64,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Counters<N> {
    /// Counters `idx` of this shard as they stood between two bracketed writes, and how many
    /// such writes it had seen: retried while a write is in progress or one ended during the
    /// read.
    ///
    /// Why it is consistent: `ended` is read first with `Acquire`, so every write it counts is
    /// seen whole; a counter value written by a later write is seen only with that write's
    /// `begun` increment (its writer's release fence, this read's acquire fence), so `begun`
    /// then counts it too and differs from `ended`. Equal, they prove no later write was seen.
    fn read_consistent<const K: usize>(&self, idx: [usize; K]) -> ([u64; K], u64) {
        let mut tries = 0u32;
        loop {
            let ended = self.ended.load(Acquire);
            let values = idx.map(|i| self.counts[i].load(Relaxed));
            fence(Acquire);
            if self.begun.load(Relaxed) == ended {
                return (values, ended);
            }
            tries += 1;
            // A writer is a few ns inside its bracket, unless it was preempted there (or, on the
            // shared shard, writers keep overlapping): then let it run.
            // (In the loom models at once: loom runs one thread at a time.)
            if tries < 64 && !cfg!(all(test, backstop_loom)) {
                std::hint::spin_loop();
            } else {
                yield_now();
            }
        }
    }
}

#[cfg(not(all(test, backstop_loom)))]
fn yield_now() {
    std::thread::yield_now();
}

#[cfg(all(test, backstop_loom))]
fn yield_now() {
    loom::thread::yield_now();
}

/// `N` counters sharded by thread.
#[derive(Debug)]
pub(crate) struct Sharded<const N: usize>([Counters<N>; SHARDS]);

impl<const N: usize> Default for Sharded<N> {
    fn default() -> Self {
        Sharded(std::array::from_fn(|_| Counters::default()))
    }
}

impl<const N: usize> Sharded<N> {
    /// Adds `n` to counter `i` on the calling thread's shard.
    #[inline]
    pub(crate) fn add(&self, i: usize, n: u64) {
        self.add_all([(i, n)]);
    }

    /// Adds each `(i, n)`: `n` to counter `i`, on the calling thread's shard.
    #[inline]
    pub(crate) fn add_all<const K: usize>(&self, adds: [(usize, u64); K]) {
        self.add_all_at(shard_index(), adds);
    }

    /// [`add_all`](Self::add_all) with the calling thread's [`shard_index`] already looked up.
    /// `s` must be that index: a plain store on a shard another thread owns would lose counts.
    #[inline]
    pub(crate) fn add_all_at<const K: usize>(&self, s: usize, adds: [(usize, u64); K]) {
        let shard = &self.0[s].counts;
        if s < SHARED {
            // This thread is the shard's only writer: a plain read-modify-write is exact.
            for (i, n) in adds {
                let c = &shard[i];
                c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
            }
        } else {
            for (i, n) in adds {
                shard[i].fetch_add(n, Relaxed);
            }
        }
    }

    /// [`add_all_at`](Self::add_all_at) as one write that [`consistent_sums`](Self::consistent_sums)
    /// sees whole or not at all. On an owned shard it adds a load and two plain stores of the
    /// shard's own line and a release fence (no instruction on x86-64), on the shared shard two
    /// `fetch_add`s.
    #[inline]
    pub(crate) fn add_all_consistent_at<const K: usize>(&self, s: usize, adds: [(usize, u64); K]) {
        let shard = &self.0[s];
        if s < SHARED {
            let n = shard.begun.load(Relaxed).wrapping_add(1);
            shard.begun.store(n, Relaxed);
            // The adds below are not seen before `begun` is (see `Counters::read_consistent`).
            fence(Release);
            for (i, n) in adds {
                let c = &shard.counts[i];
                c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
            }
            shard.ended.store(n, Release);
        } else {
            shard.begun.fetch_add(1, Relaxed);
            fence(Release);
            for (i, n) in adds {
                shard.counts[i].fetch_add(n, Relaxed);
            }
            shard.ended.fetch_add(1, Release);
        }
    }

    /// Adds `n` to counter `i` on the calling thread's shard; that shard's new value.
    #[inline]
    pub(crate) fn add_get(&self, i: usize, n: u64) -> u64 {
        let s = shard_index();
        let c = &self.0[s].counts[i];
        if s < SHARED {
            let next = c.load(Relaxed).wrapping_add(n);
            c.store(next, Relaxed);
            next
        } else {
            c.fetch_add(n, Relaxed).wrapping_add(n)
        }
    }

    /// Counter `i` of shard `s`, for [`add_release`]: a store after which the caller must not
    /// touch the memory that holds the counters again.
    #[inline]
    pub(crate) fn at(&self, s: usize, i: usize) -> &AtomicU64 {
        &self.0[s].counts[i]
    }

    /// Counter `i`, summed over the shards (wrapping), each shard's read with `Acquire`.
    pub(crate) fn sum(&self, i: usize) -> u64 {
        self.0.iter().fold(0u64, |sum, shard| {
            sum.wrapping_add(shard.counts[i].load(Acquire))
        })
    }

    /// Counters `idx` summed over the shards (wrapping), each shard read between two of its
    /// bracketed writes ([`add_all_consistent_at`](Self::add_all_consistent_at)), and how many
    /// bracketed writes each shard had seen then. Not one instant across shards: a shard read
    /// later may hold later writes (two reads whose write counts are equal prove that no write
    /// landed between them). A writer preempted inside its bracket holds the reader until it
    /// runs again.
    pub(crate) fn consistent_sums<const K: usize>(
        &self,
        idx: [usize; K],
    ) -> ([u64; K], [u64; SHARDS]) {
        let mut out = [0u64; K];
        let mut writes = [0u64; SHARDS];
        for (shard, w) in self.0.iter().zip(&mut writes) {
            let (values, ended) = shard.read_consistent(idx);
            for (sum, v) in out.iter_mut().zip(values) {
                *sum = sum.wrapping_add(v);
            }
            *w = ended;
        }
        (out, writes)
    }

    /// Every counter, summed over the shards (wrapping).
    pub(crate) fn sums(&self) -> [u64; N] {
        let mut out = [0u64; N];
        for shard in &self.0 {
            for (sum, c) in out.iter_mut().zip(&shard.counts) {
                *sum = sum.wrapping_add(c.load(Acquire));
            }
        }
        out
    }
}

/// Adds `n` with `Release` to `c`, a counter of shard `s` (from [`Sharded::at`]), as
/// [`Sharded::add_all_at`] would: a reader that acquires the sum sees everything this thread did
/// before. It takes the counter, not the `Sharded`, so that when this store is the thread's last
/// touch of the memory (`retire.rs`), no reference to the rest of it is still held by a call in
/// progress while another thread frees it: `c` is then in the same place as `Arc`'s count in
/// `Arc::drop`'s `fetch_sub`.
#[inline]
pub(crate) fn add_release(c: &AtomicU64, s: usize, n: u64) {
    if s < SHARED {
        c.store(c.load(Relaxed).wrapping_add(n), Release);
    } else {
        c.fetch_add(n, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader never sees half of a bracketed write: the writer adds 1 to both counters at
    /// once, on an owned shard and, with more threads than shards, on the shared one.
    #[test]
    fn a_consistent_read_sees_whole_writes() {
        let counts = Sharded::<2>::default();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let per = if cfg!(miri) { 50 } else { 20_000 };
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..(SHARDS + 2))
                .map(|_| {
                    s.spawn(|| {
                        let shard = shard_index();
                        for _ in 0..per {
                            counts.add_all_consistent_at(shard, [(0, 1), (1, 1)]);
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                let mut last = 0;
                while !stop.load(Relaxed) {
                    let [a, b] = counts.consistent_sums([0, 1]).0;
                    assert_eq!(a, b, "half a write seen");
                    assert!(a >= last, "a sum went back");
                    last = a;
                }
            });
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, Relaxed);
        });
        let all = (SHARDS as u64 + 2) * per;
        assert_eq!(counts.consistent_sums([0, 1]).0, [all, all]);
    }

    #[test]
    fn the_bracket_words_fit_in_the_padding() {
        assert_eq!(std::mem::size_of::<Counters<1>>(), 128);
        assert_eq!(std::mem::size_of::<Counters<14>>(), 128);
    }

    #[test]
    fn owned_and_shared_shards_lose_no_count() {
        let counts = Sharded::<2>::default();
        // More threads at once than shards: some own one, the rest share the last.
        std::thread::scope(|s| {
            for _ in 0..(2 * SHARDS) {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        counts.add_all([(0, 1), (1, 2)]);
                    }
                });
            }
        });
        assert_eq!(counts.sums(), [16_000, 32_000]);
        // Threads that come and go one after another hand their shard on.
        for _ in 0..(4 * SHARDS) {
            std::thread::scope(|s| {
                s.spawn(|| counts.add(0, 1));
            });
        }
        assert_eq!(counts.sums()[0], 16_000 + 4 * SHARDS as u64);
    }
}
