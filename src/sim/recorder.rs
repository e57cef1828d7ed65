//! What the users saw, by time bucket.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The users' side of a run: offered requests, loads, answers in time, give-ups.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    start: Instant,
    bucket: Duration,
    pub(crate) buckets: Vec<UserBucket>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) latency_sum_us: u64,
}

/// One bucket of user-side counts; latencies of the answers in time, in microseconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserBucket {
    pub(crate) offered: u64,
    pub(crate) loads: u64,
    pub(crate) goodput: u64,
    pub(crate) errors: u64,
    pub(crate) gave_up: u64,
    pub(crate) left: u64,
    pub(crate) latencies_us: Vec<u64>,
}

/// Latencies are recorded in microseconds up to an hour, with 3 significant digits.
const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Recorder {
    pub(crate) fn new(start: Instant, bucket: Duration) -> Self {
        Recorder {
            start,
            bucket,
            buckets: Vec::new(),
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant, valid histogram bounds"),
            latency_sum_us: 0,
        }
    }

    fn at(&mut self, now: Instant) -> &mut UserBucket {
        let i = (now.saturating_duration_since(self.start).as_micros()
            / self.bucket.as_micros().max(1)) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, UserBucket::default());
        }
        &mut self.buckets[i]
    }

    pub(crate) fn offered(&mut self, now: Instant) {
        self.at(now).offered += 1;
    }

    pub(crate) fn load(&mut self, now: Instant) {
        self.at(now).loads += 1;
    }

    pub(crate) fn success(&mut self, now: Instant, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency.saturating_record(us);
        self.latency_sum_us += us;
        let b = self.at(now);
        b.goodput += 1;
        b.latencies_us.push(us);
    }

    pub(crate) fn error(&mut self, now: Instant) {
        self.at(now).errors += 1;
    }

    pub(crate) fn gave_up(&mut self, now: Instant) {
        self.at(now).gave_up += 1;
    }

    pub(crate) fn left(&mut self, now: Instant) {
        self.at(now).left += 1;
    }
}
