//! Every live primitive that publishes its series in batches, so a scrape can ask for them all.

use std::sync::{Mutex, MutexGuard, TryLockError};

use metrics::Counter;

/// A publisher: publishes and says whether its primitive is still alive (dead ones are dropped).
type Publisher = Box<dyn Fn() -> bool + Send + Sync>;

static PUBLISHERS: Mutex<Vec<Publisher>> = Mutex::new(Vec::new());

/// Adds a publisher; called once when a primitive is built.
pub(crate) fn register(publisher: impl Fn() -> bool + Send + Sync + 'static) {
    let mut all = PUBLISHERS.lock().unwrap_or_else(|p| p.into_inner());
    all.push(Box::new(publisher));
}

/// Pushes the figures of every live [`LittleMeter`](super::LittleMeter) and
/// [`TokenBucket`](crate::token_bucket::TokenBucket) to their series now.
///
/// They publish by themselves at most every 100 ms, at a request, so that the request path
/// makes no `metrics` call; after the last request of a burst the series can lag by those
/// requests until the next one. Call this in the handler that renders a scrape (before
/// `PrometheusHandle::render`) for figures exact to the last request.
pub fn publish() {
    let mut all = PUBLISHERS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|publish| publish());
    drop(all);
    super::retire::sweep();
}

/// The lock of a slow path that one thread runs while the others move on (a publication, a
/// rotation): `None` while another thread holds it. A lock poisoned by a panic (a recorder's)
/// is taken anyway: what it guards is the figures last pushed, never left half-done, and a
/// poisoned lock must not stop a primitive's series for good.
pub(crate) fn try_lock_or_skip<T>(lock: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Adds to each counter what its running total gained since `last` (the totals pushed last
/// time), and keeps the new totals there: how the primitives publish the counts they keep in
/// their own atomics.
pub(crate) fn push_counts<'a>(
    counters: impl IntoIterator<Item = &'a Counter>,
    last: &mut [u64],
    totals: impl IntoIterator<Item = u64>,
) {
    for ((counter, last), total) in counters.into_iter().zip(last).zip(totals) {
        let delta = total.wrapping_sub(*last);
        if delta > 0 {
            counter.increment(delta);
            *last = total;
        }
    }
}
