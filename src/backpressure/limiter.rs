use std::sync::Arc;
use std::time::Duration;

use super::gate::{Config, Gate, QueueStats};

/// The shared state of a [`BackpressureLayer`](super::BackpressureLayer): a limit of requests in
/// flight (an atomic count while nobody waits) and a bounded FIFO wait list behind one short
/// lock.
///
/// A cheap [`Clone`] handle: every service the layer makes, and every clone of them, shares one
/// limiter, so the limit holds for the whole server, not per connection.
#[derive(Debug, Clone)]
pub struct Limiter {
    pub(crate) gate: Arc<Gate>,
}

impl Limiter {
    pub(super) fn new(max_in_flight: usize, max_waiting: usize, name: &str) -> Self {
        let config = Config {
            limit: max_in_flight,
            max_waiting,
            shedding: None,
        };
        Limiter {
            gate: Arc::new(Gate::new(config, name)),
        }
    }

    /// The most requests that may hold a slot at once.
    pub fn max_in_flight(&self) -> usize {
        self.gate.config().limit
    }

    /// The most requests that may wait; one more is refused with `QueueFull`.
    pub fn max_waiting(&self) -> usize {
        self.gate.config().max_waiting
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
