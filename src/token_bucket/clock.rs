use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Where a [`TokenBucket`](super::TokenBucket) reads the time for its refill.
///
/// A grant reads the clock once, and on most machines that read is the larger part of its cost.
///
/// - [`Clock::tokio`] (the default) reads [`tokio::time::Instant`], so a test that pauses or
///   advances tokio's clock drives the bucket too. Outside a paused runtime it is the OS
///   monotonic clock (`clock_gettime`), about 20 ns on a virtual machine.
/// - [`Clock::cpu_counter`] reads the CPU's own counter (the TSC on x86-64, `CNTVCT` on
///   aarch64) through the [`quanta`](https://docs.rs/quanta) crate, as governor does by
///   default: a few nanoseconds, calibrated against the OS clock once per process. It does not
///   see tokio's paused clock, so use it in production builds whose hot path takes many tokens
///   per second, and keep the default in tests that pause time.
/// - [`Clock::manual`] moves only when told to, for tests that run without a tokio runtime.
///
/// Waits ([`acquire`](super::TokenBucket::acquire), the layer's wait mode) sleep on tokio's
/// timer whatever the clock.
///
/// ```
/// use backstop::token_bucket::{Clock, TokenBucket};
///
/// // Build at start-up: the first counter clock of a process calibrates for up to 200 ms.
/// let bucket = TokenBucket::builder("hot-path")
///     .capacity(1_000.0)
///     .rate(50_000.0)
///     .clock(Clock::cpu_counter())
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
    Counter(quanta::Clock),
    Manual(quanta::Clock),
}

/// The hand that moves a [`Clock::manual`].
#[derive(Clone)]
pub struct ManualTime(Arc<quanta::Mock>);

impl ManualTime {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.increment(by);
    }
}

impl fmt::Debug for ManualTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualTime")
            .field(&Duration::from_nanos(self.0.value()))
            .finish()
    }
}

impl Clock {
    /// tokio's clock: honours `tokio::time::pause` and `advance`. The default.
    pub fn tokio() -> Clock {
        Clock { kind: Kind::Tokio }
    }

    /// The CPU's counter (through `quanta`), or the OS clock where quanta finds no counter it
    /// trusts (it needs an invariant TSC on x86-64). Cheaper to read; blind to tokio's paused
    /// clock.
    ///
    /// The first one in a process calibrates the counter against the OS clock, busy for up
    /// to 200 ms: build it at start-up, not in a request handler. The counter is read on
    /// whichever core the grant runs; where cores' counters disagree by δ (rare on one
    /// socket, as the kernel checks them at boot), a core ahead may grant up to rate × δ more
    /// than the bound, and a core behind grants less.
    pub fn cpu_counter() -> Clock {
        Clock {
            kind: Kind::Counter(quanta::Clock::new()),
        }
    }

    /// A clock that stands still until moved with the returned [`ManualTime`]: for tests of a
    /// bucket outside a tokio runtime. (Inside one, prefer the default clock and
    /// `tokio::time::pause`, which also moves the bucket's waiters.)
    ///
    /// ```
    /// use backstop::token_bucket::{Clock, TokenBucket};
    /// use std::time::Duration;
    ///
    /// let (clock, time) = Clock::manual();
    /// let bucket = TokenBucket::builder("t").capacity(1.0).rate(10.0).clock(clock).build()?;
    /// assert!(bucket.try_acquire(1));
    /// assert!(!bucket.try_acquire(1));
    /// time.advance(Duration::from_millis(100));
    /// assert!(bucket.try_acquire(1));
    /// # Ok::<(), backstop::ConfigError>(())
    /// ```
    pub fn manual() -> (Clock, ManualTime) {
        let (clock, mock) = quanta::Clock::mock();
        (
            Clock {
                kind: Kind::Manual(clock),
            },
            ManualTime(mock),
        )
    }

    /// Starts counting: the time from now on this clock.
    pub(crate) fn start(self) -> Epoch {
        match self.kind {
            Kind::Tokio => Epoch::Tokio(Instant::now()),
            Kind::Counter(clock) | Kind::Manual(clock) => {
                // Milliseconds per count in 0.64 fixed point, from quanta's calibration
                // (scaled over 2⁴⁰ counts so the rounding is far below a millisecond a year).
                // Rounded up, so counts of whole nanoseconds (the OS-clock fallback, the
                // manual clock) turn into exact milliseconds.
                let ns = clock.delta_as_nanos(0, 1 << 40) as f64;
                let ms_per_count = (ns / 1e6 * 2f64.powi(24)).ceil() as u64;
                let start = clock.raw();
                Epoch::Counter {
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
            Kind::Counter(_) => "Clock::cpu_counter",
            Kind::Manual(_) => "Clock::manual",
        })
    }
}

/// A clock and the instant a bucket was built at.
pub(crate) enum Epoch {
    Tokio(Instant),
    Counter {
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
            Epoch::Counter { clock, start, .. } => clock.delta(*start, clock.raw()),
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
            Epoch::Counter {
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
            Epoch::Counter { .. } => {
                Instant::now().checked_add(Duration::from_millis(at_ms.saturating_sub(now_ms)))
            }
        }
    }

    /// How long after the epoch a tokio instant in the past was, on this clock.
    pub(crate) fn since_epoch(&self, then: Instant) -> Duration {
        match self {
            Epoch::Tokio(start) => then.saturating_duration_since(*start),
            Epoch::Counter { .. } => self.elapsed().saturating_sub(then.elapsed()),
        }
    }
}
