//! Per-thread shards for counters that many threads bump: each thread takes one shard in turn,
//! so up to [`SHARDS`] threads never write the same cache line. Readers add the shards up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Shards per sharded value: a power of two.
pub(crate) const SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's shard, taken on its first call.
#[inline]
pub(crate) fn shard_index() -> usize {
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
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
        self.0[shard_index()].0[i].fetch_add(n, Relaxed);
    }

    /// The calling thread's shard.
    #[inline]
    pub(crate) fn mine(&self) -> &Counters<N> {
        &self.0[shard_index()]
    }

    /// Every counter, summed over the shards (wrapping).
    pub(crate) fn sums(&self) -> [u64; N] {
        let mut out = [0u64; N];
        for shard in &self.0 {
            for (sum, c) in out.iter_mut().zip(&shard.0) {
                *sum = sum.wrapping_add(c.load(Relaxed));
            }
        }
        out
    }
}
