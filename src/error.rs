//! The shared vocabulary of refusals and configuration mistakes.
//!
//! Every layer in backstop that refuses work answers with one type, [`Overloaded`], carrying the
//! [`OverloadReason`] and an optional hint of when to come back. Layers above find it by downcast
//! ([`find_overload`]), wherever it sits in the error's source chain, and never retry it: a refusal
//! is the system asking for less work, and a retry would be more.
//!
//! Builders return [`ConfigError`] for invalid values instead of panicking, naming the field, the
//! value given and the range allowed.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// The error type every backstop layer returns, as in tower: a boxed, thread-safe error.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverloadReason {
    /// A bounded queue or concurrency limit was full.
    QueueFull,
    /// The request waited too long, or was dropped by LIFO shedding, and was not run.
    Shed,
    /// The whole client is being throttled.
    Throttled,
    /// The admission controller refused the request.
    AdmissionDenied,
    /// The client-wide token bucket was empty.
    RateLimited,
    /// A retry or hedge budget was spent.
    BudgetExhausted,
    /// The client throttle refused locally: the server has been refusing most requests.
    ClientThrottled,
}

impl OverloadReason {
    /// A short, stable, lowercase name, used in metric labels and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            OverloadReason::QueueFull => "queue_full",
            OverloadReason::Shed => "shed",
            OverloadReason::Throttled => "throttled",
            OverloadReason::AdmissionDenied => "admission_denied",
            OverloadReason::RateLimited => "rate_limited",
            OverloadReason::BudgetExhausted => "budget_exhausted",
            OverloadReason::ClientThrottled => "client_throttled",
        }
    }
}

impl fmt::Display for OverloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request was refused so that the system does less work.
///
/// The retry and hedge layers never repeat a request that failed with this error.
///
/// ```
/// use backstop::{Overloaded, OverloadReason, BoxError, find_overload};
/// use std::time::Duration;
///
/// let err: BoxError = Overloaded::new(OverloadReason::Throttled)
///     .with_retry_after(Duration::from_secs(2))
///     .into();
/// let overload = find_overload(err.as_ref()).expect("an overload");
/// assert_eq!(overload.reason(), OverloadReason::Throttled);
/// assert_eq!(overload.retry_after(), Some(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    reason: OverloadReason,
    retry_after: Option<Duration>,
}

impl Overloaded {
    /// A refusal for `reason`, with no hint of when to come back.
    pub fn new(reason: OverloadReason) -> Self {
        Overloaded {
            reason,
            retry_after: None,
        }
    }

    /// Adds a hint of how long the caller should wait before it sends again.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Why the request was refused.
    pub fn reason(&self) -> OverloadReason {
        self.reason
    }

    /// How long the caller should wait before sending again, when the refusing layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "overloaded: {}", self.reason)?;
        if let Some(after) = self.retry_after {
            write!(f, " (retry after {:.3}s)", after.as_secs_f64())?;
        }
        Ok(())
    }
}

impl StdError for Overloaded {}

/// Finds an [`Overloaded`] in `err` or anywhere in its source chain.
pub fn find_overload<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Overloaded> {
    find_in_chain::<Overloaded>(err)
}

/// Tells whether `err`, or anything in its source chain, is an [`Overloaded`].
pub fn is_overload(err: &(dyn StdError + 'static)) -> bool {
    find_overload(err).is_some()
}

/// Tells whether `err`, or anything in its source chain, is a timeout: backstop's own
/// [`Elapsed`](crate::timeout::Elapsed), tower's or tokio's elapsed errors, or an I/O timeout.
pub fn is_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<crate::timeout::Elapsed>()
            || e.is::<tower::timeout::error::Elapsed>()
            || e.is::<tokio::time::error::Elapsed>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Finds an error of type `E` in `err` or its source chain.
pub(crate) fn find_in_chain<'a, E: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// An invalid value given to a builder, named by field, with the range that is allowed.
///
/// ```
/// use backstop::timeout::TimeoutLayer;
/// use std::time::Duration;
///
/// let err = TimeoutLayer::builder().timeout(Duration::ZERO).build().unwrap_err();
/// assert_eq!(err.field(), "timeout");
/// assert!(err.to_string().contains("greater than zero"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    value: String,
    expected: &'static str,
}

impl ConfigError {
    /// `field` was given `value`, but must be `expected` (a phrase such as "in (0, 1]").
    pub fn new(field: &'static str, value: impl fmt::Debug, expected: &'static str) -> Self {
        ConfigError {
            field,
            value: format!("{value:?}"),
            expected,
        }
    }

    /// The name of the builder field that was invalid.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The value that was given, as debug text.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What the field allows.
    pub fn expected(&self) -> &'static str {
        self.expected
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}` was {}, but must be {}",
            self.field, self.value, self.expected
        )
    }
}

impl StdError for ConfigError {}

/// The longest duration a builder keeps: about a century (100 × 365 days). A longer one, up to
/// `Duration::MAX`, means "never" to every layer, and is clamped to this so that adding it to an
/// `Instant` (which `Duration::MAX` overflows) cannot panic.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d`, or [`FOREVER`] when it is longer.
pub(crate) fn clamp_forever(d: Duration) -> Duration {
    d.min(FOREVER)
}

/// Checks a value against a predicate for a builder, naming the field when it fails.
pub(crate) fn check<T: fmt::Debug>(
    field: &'static str,
    value: T,
    ok: impl FnOnce(&T) -> bool,
    expected: &'static str,
) -> Result<T, ConfigError> {
    if ok(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(field, value, expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn overload_is_found_through_the_source_chain() {
        let inner: BoxError = Overloaded::new(OverloadReason::Shed).into();
        let outer: BoxError = Box::new(Wrapper(inner));
        assert!(is_overload(outer.as_ref()));
        assert_eq!(
            find_overload(outer.as_ref()).map(|o| o.reason()),
            Some(OverloadReason::Shed)
        );
    }

    #[test]
    fn other_errors_are_not_overloads() {
        let err: BoxError = "connection reset".into();
        assert!(!is_overload(err.as_ref()));
        assert!(!is_timeout(err.as_ref()));
    }

    #[test]
    fn io_timeouts_count_as_timeouts() {
        let err: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_timeout(err.as_ref()));
    }

    #[test]
    fn display_names_reason_and_hint() {
        let o = Overloaded::new(OverloadReason::QueueFull)
            .with_retry_after(Duration::from_millis(1500));
        assert_eq!(o.to_string(), "overloaded: queue_full (retry after 1.500s)");
    }

    #[test]
    fn config_error_names_field_value_and_range() {
        let e = ConfigError::new("fraction", 1.5, "in (0, 1]");
        assert_eq!(e.field(), "fraction");
        assert_eq!(e.value(), "1.5");
        assert_eq!(
            e.to_string(),
            "invalid configuration: `fraction` was 1.5, but must be in (0, 1]"
        );
    }
}
