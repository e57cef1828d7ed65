use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The weight of the newest request in [`LateShare`]: the share follows about the last 16
/// requests that reached their delay or answered before it.
const ALPHA: f64 = 1.0 / 16.0;

/// The share of recent requests that were still running at their hedge delay, an exponentially
/// weighted average over requests (not time), lock-free.
///
/// Each hedgeable request counts once: as on time when its first copy answers before the delay,
/// as late when the delay fires. With the delay at the p95 about 5% are late, whatever the
/// latency's shape; when the downstream slows for everyone, every request is late and the share
/// climbs toward 1 within a few requests. The layer sends a duplicate only while the share,
/// counting the request asking, is at most its bound: a duplicate helps a request that is slow
/// on its own (the premise of "The Tail at Scale"), and only adds load when all are slow.
///
/// Per request rather than per unit of time, so a burst that all arrives at once still moves
/// the share one request at a time, in the order the delays fire: from 0, the fourth late
/// request in a row finds the share at 0.23 and the fifth at 0.28.
pub(super) struct LateShare {
    /// An `f64` in `0.0..=1.0`, as bits.
    share: AtomicU64,
    /// Duplicates not sent because the share was over the bound.
    stood_down: AtomicU64,
}

impl LateShare {
    pub(super) fn new() -> Self {
        LateShare {
            share: AtomicU64::new(0f64.to_bits()),
            stood_down: AtomicU64::new(0),
        }
    }

    /// Counts one request, late or on time; returns the share with it counted.
    pub(super) fn observe(&self, late: bool) -> f64 {
        let target = if late { 1.0 } else { 0.0 };
        let step = |bits: u64| {
            let s = f64::from_bits(bits);
            (s + (target - s) * ALPHA).clamp(0.0, 1.0)
        };
        match self
            .share
            .fetch_update(Relaxed, Relaxed, |b| Some(step(b).to_bits()))
        {
            Ok(old) | Err(old) => step(old),
        }
    }

    pub(super) fn get(&self) -> f64 {
        f64::from_bits(self.share.load(Relaxed))
    }

    pub(super) fn stand_down(&self) {
        self.stood_down.fetch_add(1, Relaxed);
    }

    pub(super) fn stood_down(&self) -> u64 {
        self.stood_down.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_follows_the_late_fraction_and_climbs_fast_when_all_are_late() {
        let late = LateShare::new();
        // 1 late in 20, for a while: the share hovers around 5%.
        let mut max = 0.0f64;
        for i in 0..2_000 {
            let s = late.observe(i % 20 == 0);
            if i > 200 {
                max = max.max(s);
            }
        }
        assert!(max < 0.1, "steady share peaked at {max}");
        // Then everyone is late: over 0.25 by the fifth.
        let climbed = (1..=10).find(|_| late.observe(true) > 0.25);
        assert!(matches!(climbed, Some(n) if n <= 5), "{climbed:?}");
    }
}
