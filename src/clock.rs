//! The clock every hot path reads: one choice, made when a primitive is built.
//!
//! A grant of the [`TokenBucket`](crate::token_bucket::TokenBucket), each arrival and departure
//! of the [`LittleMeter`](crate::metrics::LittleMeter) and each quota check of
//! [`ClientQuotas`](crate::throttle::ClientQuotas) (whose reading also gives
//! [`ShedFraction`](crate::throttle::ShedFraction)'s epoch) read the time once, and on
//! most machines that read is the larger part of their cost: `clock_gettime` (what
//! `std::time::Instant` and, outside a paused runtime, `tokio::time::Instant` read) costs 20 to
//! 30 ns on a virtual machine, the CPU's own counter a few. Tests, on the other hand, need the
//! time that `tokio::time::pause` and `advance` move. [`Clock`] serves both.
//!
//! # The default, and its one trap
//! [`Clock::default()`] decides when the primitive is built:
//!
//! - built inside a tokio runtime whose clock is paused (`#[tokio::test(start_paused = true)]`,
//!   `tokio::time::pause()` already called): tokio's clock, so the test's `advance` drives it;
//! - anywhere else: the CPU's counter ([`Clock::cpu_counter`]), as governor reads by default.
//!
//! The trap: a primitive built *before* `tokio::time::pause()` (or outside the runtime that
//! later pauses) runs on the real counter, and the test's `advance` does not move it. Build
//! after pausing, or choose [`Clock::tokio`] for that primitive. The rule never misleads a
//! production build: tokio's clock can only be paused with its `test-util` feature, and a
//! runtime that is not paused gets the counter, which keeps real time.
//!
//! The first counter clock of a process calibrates the counter against the OS clock: 0.6 to
//! 0.7 ms measured on the project's VM, up to 200 ms at worst (quanta's bound). With the
//! default, that is the first primitive built outside a paused runtime: build the layers at
//! start-up, not in a request handler. Later clocks cost a few microseconds to build.
//!
//! ```
//! use backstop::clock::Clock;
//! use backstop::token_bucket::TokenBucket;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), backstop::ConfigError> {
//! tokio::time::pause();
//! // Built after the pause: the default clock is tokio's, which the test moves.
//! let bucket = TokenBucket::builder("t").capacity(1.0).rate(10.0).build()?;
//! // Built before it would need this to see the paused time:
//! let forced = TokenBucket::builder("u").capacity(1.0).rate(10.0).clock(Clock::tokio()).build()?;
//! assert!(bucket.try_acquire(1) && forced.try_acquire(1));
//! tokio::time::advance(Duration::from_millis(100)).await;
//! assert!(bucket.try_acquire(1) && forced.try_acquire(1));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Where a primitive reads the time; see the [module docs](self) for the default's rule.
///
/// - [`Clock::default()`]: tokio's clock if the primitive is built inside a runtime whose clock
///   is paused, else the CPU's counter.
/// - [`Clock::tokio`] reads [`tokio::time::Instant`] whatever happens later: a test that pauses
///   after building still drives the primitive. Outside a paused runtime it is the OS monotonic
///   clock (`clock_gettime`), 20 to 30 ns a read on a virtual machine.
/// - [`Clock::cpu_counter`] reads the CPU's own counter (the TSC on x86-64, `CNTVCT` on
///   aarch64) through the [`quanta`](https://docs.rs/quanta) crate, as governor does by
///   default: a few nanoseconds, calibrated against the OS clock once per process. Blind to
///   tokio's paused clock.
/// - [`Clock::manual`] moves only when told to, for tests that run without a tokio runtime.
///
/// Waits (the bucket's [`acquire`](crate::token_bucket::TokenBucket::acquire), the layer's
/// wait mode) sleep on tokio's timer whatever the clock.
///
/// ```
/// use backstop::clock::Clock;
/// use backstop::token_bucket::TokenBucket;
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
    /// Resolved when the primitive is built: see `Clock::start`.
    #[default]
    Auto,
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
    /// tokio's clock, always: honours `tokio::time::pause` and `advance` even when the pause
    /// comes after the primitive was built.
    pub fn tokio() -> Clock {
        Clock { kind: Kind::Tokio }
    }

    /// The CPU's counter (through `quanta`), or the OS clock where quanta finds no counter it
    /// trusts (it needs an invariant TSC on x86-64). Cheaper to read; blind to tokio's paused
    /// clock.
    ///
    /// The first one in a process calibrates the counter against the OS clock, busy for up
    /// to 200 ms: build it at start-up, not in a request handler. The counter is read on
    /// whichever core the event runs; where cores' counters disagree by δ (rare on one
    /// socket, as the kernel checks them at boot), a core ahead may grant up to rate × δ more
    /// than a bucket's bound, and a core behind grants less.
    pub fn cpu_counter() -> Clock {
        Clock {
            kind: Kind::Counter(quanta::Clock::new()),
        }
    }

    /// A clock that stands still until moved with the returned [`ManualTime`]: for tests
    /// outside a tokio runtime. (Inside one, prefer `tokio::time::pause`, which also moves
    /// the bucket's waiters.)
    ///
    /// ```
    /// use backstop::clock::Clock;
    /// use backstop::token_bucket::TokenBucket;
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

    /// Starts counting: the time from now on this clock. The default's choice is made here.
    pub(crate) fn start(self) -> Epoch {
        let clock = match self.kind {
            Kind::Auto if tokio_clock_is_paused() => return Epoch::Tokio(Instant::now()),
            Kind::Auto => quanta::Clock::new(),
            Kind::Tokio => return Epoch::Tokio(Instant::now()),
            Kind::Counter(clock) | Kind::Manual(clock) => clock,
        };
        // Scale factors from quanta's calibration, measured over 2⁴⁰ counts so the rounding is
        // far below a millisecond a year. Rounded up, so counts of whole nanoseconds (the
        // OS-clock fallback, the manual clock) turn into exact milliseconds and nanoseconds.
        let ns = clock.delta_as_nanos(0, 1 << 40) as f64;
        let ms_per_count = (ns / 1e6 * 2f64.powi(24)).ceil() as u64;
        let ns_per_count = (ns * 2f64.powi(-8)).ceil() as u64;
        let start = clock.raw();
        let source = if reads_the_tsc(&clock) {
            Source::Tsc
        } else {
            Source::Quanta(clock)
        };
        Epoch::Counter {
            source,
            start,
            ms_per_count,
            ns_per_count,
        }
    }
}

/// True when `clock` reads the CPU's time-stamp counter itself: its raw reading lands between
/// two `rdtsc`s taken around it, three times running (the OS clock's nanoseconds cannot).
/// Then a read is one inlined instruction instead of a call into quanta and a match there, a
/// few ns of a grant's 30 on a virtual machine. Never under Miri, which has no `rdtsc`.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn reads_the_tsc(clock: &quanta::Clock) -> bool {
    (0..3).all(|_| {
        let before = tsc();
        let read = clock.raw();
        let after = tsc();
        before <= read && read <= after
    })
}

#[cfg(any(not(target_arch = "x86_64"), miri))]
fn reads_the_tsc(_: &quanta::Clock) -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86-64; whether its counts mean time (an
    // invariant TSC) is quanta's check, and we only use it where quanta chose it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn tsc() -> u64 {
    unreachable!("Source::Tsc is only chosen on x86-64")
}

/// Where a counter clock's raw counts come from.
pub(crate) enum Source {
    /// `rdtsc`, inlined (quanta reads the same).
    Tsc,
    /// quanta's own read: another counter, the OS clock, or a manual clock.
    Quanta(quanta::Clock),
}

impl Source {
    #[inline(always)]
    fn raw(&self) -> u64 {
        match self {
            Source::Tsc => tsc(),
            Source::Quanta(clock) => clock.raw(),
        }
    }
}

/// True inside a tokio runtime whose clock is paused: tokio's clock stands still there while
/// the OS clock moves. Outside one (or in one that is not paused) tokio's clock *is* the OS
/// clock, so any read of tokio's clock taken after the OS clock has moved is later.
fn tokio_clock_is_paused() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let tokio_before = Instant::now();
    let os_before = std::time::Instant::now();
    // Consecutive reads of a nanosecond clock differ at once; a coarse one (100 ns ticks
    // elsewhere) takes a few spins. Bounded, in case it never moves: then nothing is known and
    // the real counter is the safe answer outside tests.
    for _ in 0..100_000 {
        if std::time::Instant::now() > os_before {
            return Instant::now() == tokio_before;
        }
        std::hint::spin_loop();
    }
    false
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Auto => "Clock::default",
            Kind::Tokio => "Clock::tokio",
            Kind::Counter(_) => "Clock::cpu_counter",
            Kind::Manual(_) => "Clock::manual",
        })
    }
}

/// A clock and the instant a primitive was built at.
pub(crate) enum Epoch {
    Tokio(Instant),
    Counter {
        source: Source,
        /// The counter's raw reading at the start.
        start: u64,
        /// Milliseconds per count × 2⁶⁴: counts become milliseconds with one multiplication,
        /// taking the high word.
        ms_per_count: u64,
        /// Nanoseconds per count × 2³² (a count can be a whole nanosecond: the OS-clock
        /// fallback, the manual clock).
        ns_per_count: u64,
    },
}

impl Epoch {
    /// True when this is tokio's clock (which paused time moves).
    #[cfg(test)]
    pub(crate) fn is_tokio(&self) -> bool {
        matches!(self, Epoch::Tokio(_))
    }

    /// The time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns())
    }

    /// Nanoseconds since the start (u64: 584 years), one clock read.
    #[inline]
    pub(crate) fn elapsed_ns(&self) -> u64 {
        match self {
            Epoch::Tokio(start) => {
                Instant::now().saturating_duration_since(*start).as_nanos() as u64
            }
            Epoch::Counter {
                source,
                start,
                ns_per_count,
                ..
            } => {
                // A core whose counter lags the one that took `start` reads as no time passed.
                let counts = source.raw().saturating_sub(*start);
                ((u128::from(counts) * u128::from(*ns_per_count)) >> 32) as u64
            }
        }
    }

    /// Milliseconds since the start, one clock read.
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
                source,
                start,
                ms_per_count,
                ..
            } => {
                let counts = source.raw().saturating_sub(*start);
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

    /// The tokio instant at which this clock read `ns` since the start: exact on tokio's clock;
    /// on another, tokio's now (for a reading just taken).
    pub(crate) fn tokio_at(&self, ns: u64) -> Instant {
        match self {
            Epoch::Tokio(start) => *start + Duration::from_nanos(ns),
            Epoch::Counter { .. } => Instant::now(),
        }
    }

    /// How long after the start a tokio instant in the past was, on this clock.
    pub(crate) fn since_epoch(&self, then: Instant) -> Duration {
        match self {
            Epoch::Tokio(start) => then.saturating_duration_since(*start),
            Epoch::Counter { .. } => self.elapsed().saturating_sub(then.elapsed()),
        }
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Epoch::Tokio(_) => "tokio",
            Epoch::Counter {
                source: Source::Tsc,
                ..
            } => "tsc",
            Epoch::Counter { .. } => "counter",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_outside_a_runtime_is_the_counter() {
        assert!(!Clock::default().start().is_tokio());
    }

    #[tokio::test]
    async fn the_default_in_a_running_clock_is_the_counter() {
        assert!(!Clock::default().start().is_tokio());
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_in_a_paused_runtime_is_tokio() {
        let epoch = Clock::default().start();
        assert!(epoch.is_tokio());
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(epoch.elapsed_ms(), 1_500);
        assert_eq!(epoch.elapsed_ns(), 1_500_000_000);
    }

    #[tokio::test]
    async fn a_pause_after_the_build_leaves_the_default_on_the_counter() {
        let auto = Clock::default().start();
        let forced = Clock::tokio().start();
        tokio::time::pause();
        assert!(!auto.is_tokio());
        assert!(forced.is_tokio());
        assert!(Clock::default().start().is_tokio());
    }

    /// quanta's counter on x86-64 with an invariant TSC is read inline; a manual clock never is.
    #[test]
    fn the_tsc_is_read_inline_only_where_quanta_reads_it() {
        let (manual, _) = Clock::manual();
        assert_eq!(format!("{:?}", manual.start()), "counter");
        let quanta_reads_tsc = {
            let clock = quanta::Clock::new();
            cfg!(target_arch = "x86_64") && {
                let a = tsc_or_zero();
                let r = clock.raw();
                a <= r && r <= tsc_or_zero()
            }
        };
        let expected = if quanta_reads_tsc { "tsc" } else { "counter" };
        assert_eq!(format!("{:?}", Clock::cpu_counter().start()), expected);
    }

    fn tsc_or_zero() -> u64 {
        #[cfg(target_arch = "x86_64")]
        return tsc();
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    #[test]
    fn a_manual_clock_counts_exact_milliseconds_and_nanoseconds() {
        let (clock, time) = Clock::manual();
        let epoch = clock.start();
        time.advance(Duration::from_nanos(1_234_567_891));
        assert_eq!(epoch.elapsed_ns(), 1_234_567_891);
        assert_eq!(epoch.elapsed_ms(), 1_234);
        time.advance(Duration::from_secs(86_400 * 365));
        assert_eq!(
            epoch.elapsed_ns(),
            1_234_567_891 + 86_400 * 365 * 1_000_000_000
        );
        assert_eq!(epoch.elapsed_ms(), 1_234 + 86_400 * 365 * 1_000);
    }

    /// The counter keeps the OS clock's time: what it reads over a 20 ms spin lies between the
    /// OS clock's readings taken around it.
    #[test]
    fn the_counter_keeps_real_time() {
        let before = std::time::Instant::now();
        let epoch = Clock::cpu_counter().start();
        let after_start = std::time::Instant::now();
        while after_start.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let inner = after_start.elapsed();
        let read = epoch.elapsed();
        let outer = before.elapsed();
        // A 0.1% allowance for the calibration's own error.
        assert!(
            read.as_secs_f64() >= inner.as_secs_f64() * 0.999
                && read.as_secs_f64() <= outer.as_secs_f64() * 1.001,
            "counter read {read:?}, the OS clock between {inner:?} and {outer:?}"
        );
    }
}
