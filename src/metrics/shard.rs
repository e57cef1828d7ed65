//! Per-thread shards for counters that many threads bump. Up to `SHARDS − 1` live threads each
//! own a shard (claimed at a thread's first count, given back when it exits): they add with a
//! plain load and store, no locked instruction and no cache line shared with another writer.
//! Further threads share the last shard and add atomically. Readers add the shards up.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// Shards per sharded value: a power of two.
pub(crate) const SHARDS: usize = 8;

/// The shard threads share once every other shard has its owner.
const SHARED: usize = SHARDS - 1;

/// Bit `i` set while a live thread owns shard `i`.
static OWNED: AtomicUsize = AtomicUsize::new(0);

/// Gives the thread's claim on a shard back when the thread exits, so that threads that come
/// and go (a blocking pool's) do not use the owned shards up.
struct Owner;

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

thread_local! {
    /// The thread's shard, `usize::MAX` before its first count. Apart from `OWNER`, whose
    /// destructor the claim needs, because a thread-local without one is read with a plain
    /// load: this is read at every count.
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    static OWNER: Owner = const { Owner };
}

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
#[inline]
pub(crate) fn shard_index() -> usize {
    match INDEX.try_with(Cell::get) {
        Ok(i) if i != usize::MAX => i,
        _ => first_count(),
    }
}

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

/// `N` counters of one thread's shard, 128-byte aligned: two shards never share a cache line,
/// nor the pair of lines an adjacent-line prefetcher pulls together.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Counters<const N: usize>(pub(crate) [AtomicU64; N]);

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
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
        let shard = &self.0[s].0;
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

    /// Adds `n` to counter `i` on the calling thread's shard; that shard's new value.
    #[inline]
    pub(crate) fn add_get(&self, i: usize, n: u64) -> u64 {
        let s = shard_index();
        let c = &self.0[s].0[i];
        if s < SHARED {
            let next = c.load(Relaxed).wrapping_add(n);
            c.store(next, Relaxed);
            next
        } else {
            c.fetch_add(n, Relaxed).wrapping_add(n)
        }
    }

    /// Adds `n` to counter `i` on shard `s` (as [`add_all_at`](Self::add_all_at)) with
    /// `Release`: a reader that acquires the sum sees everything this thread did before, which
    /// is what lets the meter free its state after the last departure (`retire.rs`).
    #[inline]
    pub(crate) fn add_release_at(&self, s: usize, i: usize, n: u64) {
        let c = &self.0[s].0[i];
        if s < SHARED {
            c.store(c.load(Relaxed).wrapping_add(n), Release);
        } else {
            c.fetch_add(n, Release);
        }
    }

    /// Every counter, summed over the shards (wrapping).
    pub(crate) fn sums(&self) -> [u64; N] {
        let mut out = [0u64; N];
        for shard in &self.0 {
            for (sum, c) in out.iter_mut().zip(&shard.0) {
                *sum = sum.wrapping_add(c.load(Acquire));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
