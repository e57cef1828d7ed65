//! The error a timed-out request returns.

use std::fmt;
use std::time::Duration;

/// Which limit ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElapsedCause {
    /// The layer's own timeout was the tighter limit and it ran out.
    OwnTimeout,
    /// The caller's deadline (scaled by the layer's fraction) was the tighter limit and it ran
    /// out, or it had already passed when the request arrived.
    CallerDeadline,
}

/// A request ran out of time in a [`Timeout`](super::Timeout) service.
///
/// Classified as retryable by [`ErrorClassifier`](crate::classify::ErrorClassifier) (and counted
/// as a timeout by [`is_timeout`](crate::is_timeout), so a retry budget can charge it more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    cause: ElapsedCause,
    budget: Duration,
}

impl Elapsed {
    pub(crate) fn new(cause: ElapsedCause, budget: Duration) -> Self {
        Elapsed { cause, budget }
    }

    /// Whether the layer's own timeout or the caller's deadline ran out.
    pub fn cause(&self) -> ElapsedCause {
        self.cause
    }

    /// The time the request was given, from the start of the wait for readiness; zero when the
    /// caller's deadline had already passed on arrival.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.budget.as_secs_f64() * 1e3;
        match self.cause {
            ElapsedCause::OwnTimeout => {
                write!(
                    f,
                    "request timed out: the layer's own {ms:.1} ms timeout ran out"
                )
            }
            ElapsedCause::CallerDeadline if self.budget.is_zero() => {
                f.write_str("request timed out: the caller's deadline had already passed")
            }
            ElapsedCause::CallerDeadline => write!(
                f,
                "request timed out: the caller's deadline ran out ({ms:.1} ms were left for this layer)"
            ),
        }
    }
}

impl std::error::Error for Elapsed {}
