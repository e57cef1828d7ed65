//! Every live primitive that publishes its series in batches, so a scrape can ask for them all.

use std::sync::Mutex;

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
