use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Where a [`TokenBucket`](super::TokenBucket) reads the time for its refill.
///
/// A grant reads the clock once, and on most machines that read is the larger part of its cost.
///
/// - [`Clock::tokio`] (the default) reads [`tokio::time::Instant`], so a test that pauses or
///   advances tokio's clock drives the bucket too. Outside a paused runtime it is the OS
///   monotonic clock (`clock_gettime`), about 20 ns on a virtual machine.
/// - [`Clock::tsc`] reads the CPU's time-stamp counter through the
///   [`quanta`](https://docs.rs/quanta) crate, as governor does by default: a few nanoseconds,
///   calibrated against the OS clock once per process. It does not see tokio's paused clock,
///   so use it in production builds whose hot path takes many tokens per second, and keep the
///   default in tests that pause time.
///
/// Either way, waits ([`acquire`](super::TokenBucket::acquire), the layer's wait mode) sleep
/// on tokio's timer.
///
/// ```
/// use backstop::token_bucket::{Clock, TokenBucket};
///
/// let bucket = TokenBucket::builder("hot-path")
///     .capacity(1_000.0)
///     .rate(50_000.0)
///     .clock(Clock::tsc())
///     .build()?;
/// assert!(bucket.try_acquire(1));
/// # Ok::<(), backstop::ConfigError>(())
/// ```
#[derive(Clone, Default)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Tokio,
    Tsc(quanta::Clock),
}

impl Clock {
    /// tokio's clock: honours `tokio::time::pause` and `advance`. The default.
    pub fn tokio() -> Clock {
        Clock { kind: Kind::Tokio }
    }

    /// The CPU's time-stamp counter (through `quanta`), falling back to the OS clock where
    /// the counter is not usable. Cheaper to read; blind to tokio's paused clock.
    pub fn tsc() -> Clock {
        Clock {
            kind: Kind::Tsc(quanta::Clock::new()),
        }
    }

    /// Starts counting: the time from now on this clock.
    pub(crate) fn start(self) -> Epoch {
        match self.kind {
            Kind::Tokio => Epoch::Tokio(Instant::now()),
            Kind::Tsc(clock) => {
                // Milliseconds per count in 0.64 fixed point, from quanta's calibration
                // (scaled over 2⁴⁰ counts so the rounding is far below a millisecond a year).
                let ns = clock.delta_as_nanos(0, 1 << 40) as f64;
                let ms_per_count = (ns / 1e6 * 2f64.powi(24)) as u64;
                let start = clock.raw();
                Epoch::Tsc {
                    clock,
                    start,
                    ms_per_count,
                }
            }
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Tokio => "Clock::tokio",
            Kind::Tsc(_) => "Clock::tsc",
        })
    }
}

/// A clock and the instant a bucket was built at.
pub(crate) enum Epoch {
    Tokio(Instant),
    Tsc {
        clock: quanta::Clock,
        /// The counter's raw reading at the start.
        start: u64,
        /// Milliseconds per count × 2⁶⁴: a grant turns counts into milliseconds with one
        /// multiplication, taking the high word.
        ms_per_count: u64,
    },
}

impl Epoch {
    /// The time since the bucket was built.
    pub(crate) fn elapsed(&self) -> Duration {
        match self {
            Epoch::Tokio(start) => Instant::now().saturating_duration_since(*start),
            Epoch::Tsc { clock, start, .. } => clock.delta(*start, clock.raw()),
        }
    }

    /// Milliseconds since the bucket was built.
    #[inline]
    pub(crate) fn elapsed_ms(&self) -> u64 {
        match self {
            Epoch::Tokio(start) => {
                let d = Instant::now().saturating_duration_since(*start);
                d.as_secs()
                    .saturating_mul(1000)
                    .saturating_add(u64::from(d.subsec_millis()))
            }
            Epoch::Tsc {
                clock,
                start,
                ms_per_count,
            } => {
                // A core whose counter lags the one that took `start` reads as no time passed.
                let counts = clock.raw().saturating_sub(*start);
                ((u128::from(counts) * u128::from(*ms_per_count)) >> 64) as u64
            }
        }
    }

    /// The tokio instant at which this clock reads `at_ms`, given that it reads `now_ms` now.
    /// On tokio's own clock that is exact; on another clock it is counted from tokio's now, so
    /// a waiter may wake up to a millisecond late (never early: the whole milliseconds of
    /// `now_ms` are rounded down).
    pub(crate) fn tokio_instant(&self, at_ms: u64, now_ms: u64) -> Option<Instant> {
        match self {
            Epoch::Tokio(start) => start.checked_add(Duration::from_millis(at_ms)),
            Epoch::Tsc { .. } => {
                Instant::now().checked_add(Duration::from_millis(at_ms.saturating_sub(now_ms)))
            }
        }
    }

    /// How long after the epoch a tokio instant in the past was, on this clock.
    pub(crate) fn since_epoch(&self, then: Instant) -> Duration {
        match self {
            Epoch::Tokio(start) => then.saturating_duration_since(*start),
            Epoch::Tsc { .. } => self.elapsed().saturating_sub(then.elapsed()),
        }
    }
}
