//! Where a meter whose last handle is gone waits until its last request in flight departs.
//!
//! A request in flight keeps its meter alive, and the obvious way, an `Arc` cloned at the
//! arrival and dropped at the departure, costs two locked read-modify-writes per request (about
//! 25 ns of the meter's 67 on the 2-core VM, and a line bounced between cores when threads share
//! the count). The meter already counts what is in flight, exactly, in its shards: a request
//! adds the same packed word to `arrivals` when it starts and to `released` as the very last
//! thing its departure does (after it has counted, rotated and published), so the two sums are
//! equal exactly when no guard can touch the meter any more. So a guard holds a plain pointer,
//! and the meter's state is freed when its last handle is dropped *and* the two sums are equal.
//!
//! The store to `released` is made with `Release` and the sums are read with `Acquire` under
//! this list's lock, so everything a departing thread did to the meter happens before it is
//! freed. Nothing arrives after the last handle is gone (an arrival needs a handle). A retired
//! meter is looked at when it retires, after any departure while the list is not empty, when a
//! meter is built and on [`publish`](super::publish): a last departure that races the
//! retirement and misses the list can leave one meter's state waiting until the next of those.

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::meter::Inner;

/// A retired meter's state, owned by the list.
struct Retired(NonNull<Inner>);

// SAFETY: `Inner` is `Send + Sync` (asserted in `meter.rs`); the list owns the allocation.
unsafe impl Send for Retired {}

static RETIRED: Mutex<Vec<Retired>> = Mutex::new(Vec::new());

/// The list's length, read without the lock by every departure: 0 almost always.
static WAITING: AtomicUsize = AtomicUsize::new(0);

fn list() -> std::sync::MutexGuard<'static, Vec<Retired>> {
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
    free_settled(&mut list);
}

/// Frees every retired meter with nothing in flight; cheap when none waits.
#[inline]
pub(super) fn sweep() {
    if WAITING.load(Relaxed) != 0 {
        free_settled(&mut list());
    }
}

#[cold]
fn free_settled(list: &mut Vec<Retired>) {
    list.retain(|retired| {
        // SAFETY: the list owns every entry until it frees it here, once.
        let settled = unsafe { retired.0.as_ref() }.settled();
        if settled {
            // SAFETY: from `Box::into_raw` (see `retire`); no handle is left, nothing is in
            // flight and nothing can arrive, so nobody else touches it any more.
            drop(unsafe { Box::from_raw(retired.0.as_ptr()) });
        }
        !settled
    });
    WAITING.store(list.len(), Relaxed);
}

/// True while `inner` waits in the list (not yet freed).
#[cfg(test)]
pub(super) fn is_waiting(inner: *const Inner) -> bool {
    list().iter().any(|r| std::ptr::eq(r.0.as_ptr(), inner))
}
