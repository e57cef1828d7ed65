//! Where a meter whose last handle is gone waits until its last request in flight departs.
//!
//! A request in flight keeps its meter alive, and the obvious way, an `Arc` cloned at the
//! arrival and dropped at the departure, costs two locked read-modify-writes per request (about
//! 25 ns of the meter's 67 on the 2-core VM, and a line bounced between cores when threads share
//! the count). The meter already counts its requests in per-thread shards, so a guard holds a
//! plain pointer instead, and the state is freed when its last handle is dropped *and* every
//! request that arrived has let go of it.
//!
//! # Why the pointer stays valid
//! Each shard keeps two plain 64-bit counts: `arrived`, +1 at each arrival, and `released`, +1
//! as the very last touch of the state by a departure (after it has counted, rotated and
//! published; the store is made through a reference to that one counter, with `Release`). The
//! state is freed only by this list, which takes it out under its lock once
//! `Σ released == Σ arrived`, each shard read with `Acquire`, and frees it after. That equality
//! proves that every guard has made its last touch:
//!
//! 1. *The arrivals are final and all seen.* An arrival needs a handle; the list gets the state
//!    only when the last handle is dropped, and every arrival happens before that drop (through
//!    `Arc`'s own release and acquire) and so before the list's reads (through the list's lock).
//!    So the sum of `arrived` that the list reads is the total number of guards, `A`, forever.
//! 2. *Each shard's `released` only grows, and never passes what was released.* One guard
//!    releases once (`finished`), so the releases ever made total at most `A`; a shard's count
//!    read at any moment is some value of its history, at most its final value. The counts are
//!    64-bit and count requests, so they do not wrap (2^64 requests at 1 ns each take 584 years).
//! 3. So if the shard reads sum to `A`, each read *is* its shard's final value (each is at most
//!    its final, and the finals sum to at most `A`): every guard has released. A shard's final
//!    value was stored, with `Release`, by the last release on that shard; the `Acquire` read of
//!    it synchronizes with that store, which follows every earlier release on the shard (in the
//!    owner's thread, across a change of owner through the claim's release and acquire, or in
//!    the release sequence of the shared shard's `fetch_add`s). So every guard's every touch of
//!    the state happens before the free.
//!
//! This is exact, where comparing wrapping sums of the packed `(start << 20) + 1` words (the
//! first version) was not: a strict subset of the departures could sum to the arrivals modulo
//! 2^64. A guard forgotten with `mem::forget` never releases, and its meter's state is then
//! never freed: a leak, never a use after free. The loom model (`loom_model.rs`) runs this
//! protocol on the real meter, and the meter's unit tests run it under Miri.
//!
//! # When the list is looked at
//! When a meter retires, after any departure while the list is not empty (one relaxed load of
//! its length otherwise), when a meter is built, whenever any meter publishes (at most every
//! 100 ms of its clock, at a request) and on [`publish`](super::publish). A last departure that
//! races the retirement can miss the list (it loads the length before the retiring thread's
//! store is visible, while the retiring thread read the counts before the release): closing that
//! window would need a full fence on every departure, so that meter's state waits for the next
//! of those looks instead.

use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;

#[cfg(all(test, backstop_loom))]
use loom::sync::{Mutex, MutexGuard, atomic::AtomicUsize};
#[cfg(not(all(test, backstop_loom)))]
use std::sync::{Mutex, MutexGuard, atomic::AtomicUsize};

use super::meter::Inner;

/// A retired meter's state, owned by the list.
struct Retired(NonNull<Inner>);

// SAFETY: `Inner` is `Send + Sync` (asserted in `meter.rs`); the list owns the allocation.
unsafe impl Send for Retired {}

#[cfg(not(all(test, backstop_loom)))]
static RETIRED: Mutex<Vec<Retired>> = Mutex::new(Vec::new());

/// The list's length, read without the lock by every departure: 0 almost always.
#[cfg(not(all(test, backstop_loom)))]
static WAITING: AtomicUsize = AtomicUsize::new(0);

// In the loom model the list and its length are loom's, made anew for every execution.
#[cfg(all(test, backstop_loom))]
loom::lazy_static! {
    static ref RETIRED: Mutex<Vec<Retired>> = Mutex::new(Vec::new());
    static ref WAITING: AtomicUsize = AtomicUsize::new(0);
}

fn list() -> MutexGuard<'static, Vec<Retired>> {
    RETIRED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes over `inner` (from `Box::into_raw`) when the meter's last handle is dropped, and frees
/// it at once if nothing is in flight.
///
/// # Safety
/// `inner` came from `Box::into_raw`, no handle to it is left, and it is retired once.
pub(super) unsafe fn retire(inner: NonNull<Inner>) {
    let mut list = list();
    list.push(Retired(inner));
    let settled = take_settled(&mut list);
    drop(list);
    free(settled);
}

/// Frees every retired meter with nothing in flight; cheap when none waits.
#[inline]
pub(super) fn sweep() {
    if WAITING.load(Relaxed) != 0 {
        let settled = take_settled(&mut list());
        free(settled);
    }
}

/// Takes every retired meter with nothing in flight out of the list. They leave it before they
/// are freed: a drop that panics (a recorder's series handle) cannot leave a freed state in the
/// list for the next sweep to read; it leaks the rest of the batch instead.
#[cold]
fn take_settled(list: &mut Vec<Retired>) -> Vec<Retired> {
    let mut settled = Vec::new();
    let mut i = 0;
    while i < list.len() {
        // SAFETY: the list owns every entry until it hands it to `free`, once.
        if unsafe { list[i].0.as_ref() }.settled() {
            settled.push(list.swap_remove(i));
        } else {
            i += 1;
        }
    }
    WAITING.store(list.len(), Relaxed);
    settled
}

fn free(settled: Vec<Retired>) {
    for retired in settled {
        // SAFETY: from `Box::into_raw` (see `retire`), taken out of the list once; no handle is
        // left, and every guard has made its last touch, which happens before this (see the
        // module docs).
        drop(unsafe { Box::from_raw(retired.0.as_ptr()) });
    }
}

/// True while `inner` waits in the list (not yet freed).
#[cfg(test)]
pub(super) fn is_waiting(inner: *const Inner) -> bool {
    list().iter().any(|r| std::ptr::eq(r.0.as_ptr(), inner))
}
