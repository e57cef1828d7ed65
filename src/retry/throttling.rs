use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::budget::Series;
use super::{Budget, RetryKind};
use crate::error::{ConfigError, check};

/// gRPC keeps tokens to three decimals (A6: "`tokenRatio` ... up to 3 decimal places"), so they
/// are kept in thousandths and every step is exact.
const MILLI: f64 = 1000.0;

/// gRPC's retry throttling (the A6 design) as a [`Budget`]: a client starts with `max_tokens`,
/// loses one per failed call and earns `token_ratio` per successful one, and may retry only
/// while it holds more than half of `max_tokens`.
///
/// This is the behaviour a gRPC user knows from grpc-go and grpc-java's `retryThrottling`
/// service config (`maxTokens`, `tokenRatio`), offered next to backstop's own
/// [`RetryBudget`](super::RetryBudget) so a service can choose. They differ in what an outage
/// costs:
///
/// - `RetryThrottling` starts full and lends retries until the failures have eaten half the
///   tokens: with A6's example (10 tokens, ratio 0.1), a fresh client whose calls all fail
///   retries its first 2 calls (each call and its retry cost a token each: 9, 8, 7, 6, then 5
///   is not above half), then none until 10 successes per missing token bring it back above
///   half. It is a circuit on the failure rate: while fewer than about
///   `token_ratio / (1 + token_ratio)` of calls fail (9 % at ratio 0.1) retries stay allowed, one
///   per failure, so retries can add up to that share of the load;
/// - [`RetryBudget`](super::RetryBudget) starts empty and pays each retry from the successes
///   (ratio 0.01 by default): a fresh client retries nothing until it has earned it, and over
///   any run retries are at most `ratio × successes` plus a small floor. It is the stricter
///   default, Amazon's rule of 1 retry per 100 successes.
///
/// A failure is counted by [`on_failure`](Budget::on_failure), which the retry layer calls for
/// every retryable failure, retried or not; [`try_withdraw`](Budget::try_withdraw) only asks
/// whether the tokens are above half and takes nothing, and [`refund`](Budget::refund) does
/// nothing: in A6 the token pays for the failure, which happened, not for the retry. Overloads
/// (`RESOURCE_EXHAUSTED`, a 429) are never retried by backstop and are not counted as failures.
///
/// Metrics (labelled `name`): the same series as [`RetryBudget`](super::RetryBudget)'s
/// (tokens held, retries allowed, retries denied).
///
/// ```
/// use backstop::retry::{Budget, RetryKind, RetryThrottling};
///
/// // A6's example: 10 tokens, 0.1 per success.
/// let throttling = RetryThrottling::builder("payments").max_tokens(10.0).token_ratio(0.1).build()?;
/// let mut retried = 0;
/// for _ in 0..10 {
///     throttling.on_failure();
///     if throttling.try_withdraw(RetryKind::AfterError) { retried += 1; }
/// }
/// assert_eq!(retried, 4); // 9, 8, 7, 6 tokens are above half; 5 is not
/// # Ok::<(), backstop::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryThrottling {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Tokens held, in thousandths.
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
    series: Series,
}

impl RetryThrottling {
    /// A builder, with A6's example values (10 tokens, ratio 0.1). `name` labels the metrics.
    pub fn builder(name: impl Into<String>) -> RetryThrottlingBuilder {
        RetryThrottlingBuilder {
            name: name.into(),
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }

    /// The name the metrics carry.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The tokens held now.
    pub fn tokens(&self) -> f64 {
        self.inner.tokens.load(Relaxed) as f64 / MILLI
    }

    /// True while retries are allowed: more than half of `max_tokens` held.
    pub fn allows_retries(&self) -> bool {
        self.inner.tokens.load(Relaxed) * 2 > self.inner.max
    }

    fn update(&self, f: impl Fn(u64) -> u64) {
        let i = &self.inner;
        let before = i
            .tokens
            .fetch_update(Relaxed, Relaxed, |t| Some(f(t)))
            .unwrap_or_else(|t| t);
        i.series.tokens.set(f(before) as f64 / MILLI);
    }
}

impl Budget for RetryThrottling {
    fn deposit(&self) {
        let (ratio, max) = (self.inner.ratio, self.inner.max);
        self.update(|t| t.saturating_add(ratio).min(max));
    }

    fn try_withdraw(&self, _kind: RetryKind) -> bool {
        let allowed = self.allows_retries();
        if allowed {
            self.inner.series.allowed.increment(1);
        } else {
            self.inner.series.denied.increment(1);
        }
        allowed
    }

    fn refund(&self, _kind: RetryKind) {}

    fn on_failure(&self) {
        self.update(|t| t.saturating_sub(MILLI as u64));
    }
}

impl fmt::Debug for RetryThrottling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryThrottling")
            .field("name", &self.inner.name)
            .field("tokens", &self.tokens())
            .field("max_tokens", &(self.inner.max as f64 / MILLI))
            .field("token_ratio", &(self.inner.ratio as f64 / MILLI))
            .finish()
    }
}

/// Builds a [`RetryThrottling`]; see [`RetryThrottling::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryThrottlingBuilder {
    name: String,
    max_tokens: f64,
    token_ratio: f64,
}

impl RetryThrottlingBuilder {
    /// The tokens a client starts with and can hold, in (0, 1000] as A6 allows. Default 10.
    pub fn max_tokens(mut self, max_tokens: f64) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// The tokens a success earns, in [0.001, 1000] (A6 keeps three decimals). Default 0.1.
    pub fn token_ratio(mut self, token_ratio: f64) -> Self {
        self.token_ratio = token_ratio;
        self
    }

    /// Checks the fields and builds the budget, full.
    pub fn build(self) -> Result<RetryThrottling, ConfigError> {
        let max = check(
            "max_tokens",
            self.max_tokens,
            |m| *m > 0.0 && *m <= 1000.0,
            "in (0, 1000]",
        )?;
        let ratio = check(
            "token_ratio",
            self.token_ratio,
            |r| (0.001..=1000.0).contains(r),
            "in [0.001, 1000]",
        )?;
        let max = (max * MILLI).round() as u64;
        let series = Series::register(&self.name);
        series.tokens.set(max as f64 / MILLI);
        Ok(RetryThrottling {
            inner: Arc::new(Inner {
                name: self.name,
                tokens: AtomicU64::new(max),
                max: max.max(1),
                ratio: (ratio * MILLI).round() as u64,
                series,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a6() -> RetryThrottling {
        RetryThrottling::builder("a6").build().unwrap()
    }

    #[test]
    fn a_fresh_client_retries_four_failures_then_stops() {
        let t = a6();
        let mut allowed = Vec::new();
        for _ in 0..8 {
            t.on_failure();
            allowed.push(t.try_withdraw(RetryKind::AfterError));
        }
        assert_eq!(
            allowed,
            [true, true, true, true, false, false, false, false]
        );
        assert_eq!(t.tokens(), 2.0);
    }

    #[test]
    fn tokens_never_go_below_zero_nor_above_max() {
        let t = a6();
        for _ in 0..30 {
            t.on_failure();
        }
        assert_eq!(t.tokens(), 0.0);
        for _ in 0..1000 {
            t.deposit();
        }
        assert_eq!(t.tokens(), 10.0);
    }

    #[test]
    fn successes_at_the_ratio_bring_retries_back_above_half() {
        let t = a6();
        for _ in 0..5 {
            t.on_failure();
        }
        assert_eq!(t.tokens(), 5.0);
        assert!(!t.allows_retries(), "exactly half is not above half");
        t.deposit();
        assert!((t.tokens() - 5.1).abs() < 1e-9);
        assert!(t.allows_retries());
        // A failure then costs a whole token: 4.1, throttled again; 10 successes per token back.
        t.on_failure();
        assert!(!t.try_withdraw(RetryKind::AfterError));
        for _ in 0..9 {
            t.deposit();
        }
        assert_eq!(t.tokens(), 5.0);
        assert!(!t.allows_retries());
        t.deposit();
        assert!(t.allows_retries());
    }

    #[test]
    fn the_steady_failure_rate_it_tolerates_is_ratio_over_one_plus_ratio() {
        // 1 failure in 12 calls (8.3 %) stays above half; 1 in 10 (10 %) does not.
        for (every, stays) in [(12, true), (10, false)] {
            let t = a6();
            for call in 0..2000 {
                if call % every == 0 {
                    t.on_failure();
                } else {
                    t.deposit();
                }
            }
            assert_eq!(t.allows_retries(), stays, "1 failure in {every}");
        }
    }

    #[test]
    fn refunds_change_nothing_a_failure_happened() {
        let t = a6();
        t.on_failure();
        assert!(t.try_withdraw(RetryKind::AfterTimeout));
        t.refund(RetryKind::AfterTimeout);
        assert_eq!(t.tokens(), 9.0);
    }

    #[test]
    fn bad_configuration_names_the_field() {
        for bad in [0.0, -1.0, 1000.5, f64::NAN] {
            let e = RetryThrottling::builder("x")
                .max_tokens(bad)
                .build()
                .unwrap_err();
            assert_eq!(e.field(), "max_tokens");
            assert_eq!(e.expected(), "in (0, 1000]");
        }
        for bad in [0.0, 0.0004, f64::INFINITY, f64::NAN] {
            let e = RetryThrottling::builder("x")
                .token_ratio(bad)
                .build()
                .unwrap_err();
            assert_eq!(e.field(), "token_ratio");
        }
    }
}
