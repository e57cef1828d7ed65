use std::sync::Arc;
use std::time::Duration;

use crate::backpressure::QueueStats;
use crate::backpressure::gate::{Config, Gate, Shedding};

/// The shared state of a [`LifoQueueLayer`](super::LifoQueueLayer): a concurrency limit with an
/// adaptive FIFO/LIFO wait list in front of it (an atomic count while nobody waits, one short
/// lock once someone does).
///
/// A cheap [`Clone`] handle: every service the layer makes, and every clone of them, shares one
/// queue.
#[derive(Debug, Clone)]
pub struct AdaptiveQueue {
    pub(crate) gate: Arc<Gate>,
}

impl AdaptiveQueue {
    pub(super) fn new(config: Config, name: &str) -> Self {
        AdaptiveQueue {
            gate: Arc::new(Gate::new(config, name)),
        }
    }

    fn shedding(&self) -> Shedding {
        self.gate
            .config()
            .shedding
            .expect("an adaptive queue always sheds")
    }

    /// The most requests that may hold a slot at once.
    pub fn max_in_flight(&self) -> usize {
        self.gate.config().limit
    }

    /// The most requests that may wait (main list and sideline together).
    pub fn max_waiting(&self) -> usize {
        self.gate.config().max_waiting
    }

    /// The longest a waiter may wait once the queue is behind.
    pub fn target(&self) -> Duration {
        self.shedding().target
    }

    /// How long the queue must stay non-empty to count as behind; also the longest a waiter may
    /// wait while it is not.
    pub fn interval(&self) -> Duration {
        self.shedding().interval
    }

    /// The longest a sidelined waiter may wait in all, if sidelining is on.
    pub fn sideline(&self) -> Option<Duration> {
        self.shedding().sideline
    }

    /// True while the queue has not been empty for `interval`: it serves the newest waiter first
    /// and sheds waiters older than `target`.
    pub fn is_behind(&self) -> bool {
        self.gate.is_behind()
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.stats().in_flight
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.stats().waiting
    }

    /// How long the oldest waiter has waited: the health metric of a queue.
    pub fn oldest_wait(&self) -> Option<Duration> {
        self.stats().oldest_wait
    }

    /// Everything at once, read under one lock.
    pub fn stats(&self) -> QueueStats {
        self.gate.stats()
    }
}
