use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use crate::error::{ConfigError, check};
use crate::metrics::names;

/// Tokens are kept in millionths, so any ratio given with up to six decimals is kept exactly and
/// no withdrawal is ever rounded (tower's `TpsBudget` truncates `1 / ratio` to an integer).
const MICROS: f64 = 1_000_000.0;
const NANOS_PER_SEC: f64 = 1_000_000_000.0;
/// The largest cap accepted: 10⁹ tokens in millionths stays far inside an `i64`.
const MAX_TOKENS_LIMIT: f64 = 1e9;
/// The largest floor accepted, in retries per second.
const MAX_FLOOR: f64 = 1e6;

/// What a retry follows, which sets its price: a retry after a timeout costs more, because the
/// request it repeats may still be running on the server (the AWS SDKs charge 10 against 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryKind {
    /// A retry after an error or a retryable response (a 5xx, a reset connection).
    AfterError,
    /// A retry after a timeout.
    AfterTimeout,
}

/// A shared allowance of retries, which the [`RetryLayer`](super::RetryLayer) asks before each
/// retry.
///
/// [`RetryBudget`] is the implementation backstop provides. Implement it for another policy, for
/// example a token bucket charged like the AWS SDKs' standard-mode retry quota (5 per retry, 10
/// per retry after a timeout, 1 back per success).
///
/// The layer calls [`try_withdraw`](Budget::try_withdraw) when it decides to retry, before its
/// delay, and [`refund`](Budget::refund) if the retry is then cancelled before it is sent (the
/// response future was dropped during the delay, or the inner service failed to become ready),
/// so a cancelled retry costs nothing.
pub trait Budget {
    /// Records a successful call.
    fn deposit(&self);
    /// Takes the price of one retry of `kind`; false when the budget cannot pay it.
    fn try_withdraw(&self, kind: RetryKind) -> bool;
    /// Gives back the price of a retry of `kind` that was withdrawn but never sent.
    fn refund(&self, kind: RetryKind);
    /// Records a call that failed in a retryable way, whether or not it is then retried (the
    /// first attempt's failure, before [`try_withdraw`](Budget::try_withdraw), and the retry's
    /// own). Budgets that count failures, such as gRPC's retry throttling
    /// ([`RetryThrottling`](super::RetryThrottling)), use it; the default does nothing.
    fn on_failure(&self) {}
}

impl<T: Budget + ?Sized> Budget for Arc<T> {
    fn deposit(&self) {
        (**self).deposit()
    }
    fn try_withdraw(&self, kind: RetryKind) -> bool {
        (**self).try_withdraw(kind)
    }
    fn refund(&self, kind: RetryKind) {
        (**self).refund(kind)
    }
    fn on_failure(&self) {
        (**self).on_failure()
    }
}

/// A client-wide retry budget: successes earn retries, at a fixed ratio, exactly.
///
/// Each success deposits `ratio` of a token (default 0.01: one retry per 100 successes, the rule
/// Amazon adopted after Prime Day 2018); a retry after an error withdraws one token and a retry
/// after a timeout withdraws `timeout_cost` (default 2). Stored tokens are capped (default 10), so
/// a long healthy period cannot bank an avalanche, and a new budget starts empty (default): a
/// client earns its first retry. A small floor (default 1 retry per second) lets a quiet client
/// still retry now and then; the floor is a time-based allowance, computed when asked from
/// [`tokio::time::Instant`] (no background task), that banks at most
/// `max(floor × 1 s, timeout_cost)` tokens and starts empty.
///
/// By default the floor also needs successes: it lends at most one token per success seen, and
/// holds at most its bank of such credit (see
/// [`floor_needs_successes`](RetryBudgetBuilder::floor_needs_successes)). A fixed floor is a
/// fixed extra load whatever the traffic: 1 retry/s is 1% more at 100 requests/s but 10% at
/// 10/s, at each level of a call chain that retries. Gated by successes, the floor still lets a
/// quiet, healthy client retry its occasional failure, but lends nothing to a client whose
/// calls all fail (Amazon's rule: no retry until a client has seen successes).
///
/// Over any run, the tokens granted (net of refunds) are at most
/// `initial_tokens + ratio × successes + min(floor × elapsed seconds, successes)` (without the
/// gate, `floor × elapsed seconds` alone).
///
/// A cheap [`Clone`] handle: clones share one budget, so every service of a client can draw on
/// the same one. Deposits and withdrawals are lock-free (compare-and-swap on fixed-point
/// tokens, in millionths).
///
/// Metrics (labelled `name`): [`RETRY_BUDGET_TOKENS`](names::RETRY_BUDGET_TOKENS),
/// [`RETRIES_ALLOWED`](names::RETRIES_ALLOWED) and [`RETRIES_DENIED`](names::RETRIES_DENIED),
/// registered reading 0 when the budget is built.
///
/// ```
/// use backstop::retry::{Budget, RetryBudget, RetryKind};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::ConfigError> {
/// let budget = RetryBudget::builder("checkout").ratio(0.3).min_per_second(0.0).build()?;
/// assert!(!budget.try_withdraw(RetryKind::AfterError)); // a new client earns its first retry
///
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert_eq!(budget.tokens(), 3.0); // exactly 0.3 per success, no truncation
/// let granted = (0..10).filter(|_| budget.try_withdraw(RetryKind::AfterError)).count();
/// assert_eq!(granted, 3);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Earned tokens, in millionths; never above `cap`.
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
    error_cost: i64,
    timeout_cost: i64,
    floor: Option<Floor>,
    /// The floor's credit, in millionths: one token per success, up to the floor's bank. `None`
    /// when the floor does not need successes (or there is no floor).
    floor_credit: Option<Credit>,
    deposits: AtomicU64,
    granted: AtomicU64,
    denied: AtomicU64,
    refunded: AtomicU64,
    series: Series,
}

/// The time-based floor, as a GCRA ("virtual scheduling"): one atomic word holds the theoretical
/// time, in nanoseconds since `epoch`, at which the allowance would be spent.
struct Floor {
    epoch: Instant,
    tat_ns: AtomicU64,
    /// How far ahead of now the theoretical time may run: the floor's bank, in nanoseconds.
    tolerance_ns: u64,
    per_second: f64,
}

/// Tokens the floor may still lend, earned one per success and capped at the floor's bank.
struct Credit {
    micros: AtomicI64,
    cap: i64,
}

impl Credit {
    fn add(&self, micros: i64) {
        let mut cur = self.micros.load(Relaxed);
        loop {
            // A healthy client sits at the cap: one load, no write.
            if cur >= self.cap {
                return;
            }
            let next = cur.saturating_add(micros).min(self.cap);
            match self
                .micros
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn take(&self, micros: i64) -> bool {
        let mut cur = self.micros.load(Relaxed);
        loop {
            if cur < micros {
                return false;
            }
            match self
                .micros
                .compare_exchange_weak(cur, cur - micros, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

pub(super) struct Series {
    pub(super) tokens: Gauge,
    pub(super) allowed: Counter,
    pub(super) denied: Counter,
}

impl Series {
    pub(super) fn register(name: &str) -> Self {
        use metrics::{Unit, describe_counter, describe_gauge};
        describe_gauge!(
            names::RETRY_BUDGET_TOKENS,
            Unit::Count,
            "Tokens a retry budget holds now."
        );
        describe_counter!(
            names::RETRIES_ALLOWED,
            Unit::Count,
            "Retries a retry budget allowed."
        );
        describe_counter!(
            names::RETRIES_DENIED,
            Unit::Count,
            "Retries a retry budget denied."
        );
        let label = names::NAME_LABEL;
        let series = Series {
            tokens: gauge!(names::RETRY_BUDGET_TOKENS, label => name.to_owned()),
            allowed: counter!(names::RETRIES_ALLOWED, label => name.to_owned()),
            denied: counter!(names::RETRIES_DENIED, label => name.to_owned()),
        };
        series.allowed.increment(0);
        series.denied.increment(0);
        series
    }
}

impl Floor {
    fn new(per_second: f64, bank_tokens: f64) -> Self {
        let tolerance_ns = (bank_tokens * NANOS_PER_SEC / per_second).floor() as u64;
        Floor {
            epoch: Instant::now(),
            // Starts empty: the bank fills as time passes.
            tat_ns: AtomicU64::new(tolerance_ns),
            tolerance_ns,
            per_second,
        }
    }

    /// The allowance, in nanoseconds, that `micros` millionths of a token use up; rounded up,
    /// so the floor never grants more than its rate.
    fn cost_ns(&self, micros: i64) -> u64 {
        (micros as f64 * (NANOS_PER_SEC / MICROS) / self.per_second).ceil() as u64
    }

    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    fn try_take(&self, micros: i64) -> bool {
        let cost = self.cost_ns(micros);
        let now = self.now_ns();
        let mut tat = self.tat_ns.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost);
            if next - now > self.tolerance_ns {
                return false;
            }
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }

    /// The allowance banked now, in tokens.
    fn available(&self) -> f64 {
        let now = self.now_ns();
        let ahead = self.tat_ns.load(Relaxed).saturating_sub(now);
        let free_ns = self.tolerance_ns.saturating_sub(ahead);
        free_ns as f64 * self.per_second / NANOS_PER_SEC
    }
}

impl Inner {
    fn cost(&self, kind: RetryKind) -> i64 {
        match kind {
            RetryKind::AfterError => self.error_cost,
            RetryKind::AfterTimeout => self.timeout_cost,
        }
    }

    /// Adds `micros` to the balance, up to the cap; returns the new balance.
    fn add(&self, micros: i64) -> i64 {
        let mut cur = self.balance.load(Relaxed);
        loop {
            // At the cap (a healthy client), a deposit is one load and no write.
            if cur >= self.cap {
                return cur;
            }
            let next = cur.saturating_add(micros).min(self.cap);
            match self
                .balance
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes `micros` from the balance when it holds that many; the new balance when it did.
    fn take(&self, micros: i64) -> Option<i64> {
        let mut cur = self.balance.load(Relaxed);
        loop {
            if cur < micros {
                return None;
            }
            match self
                .balance
                .compare_exchange_weak(cur, cur - micros, Relaxed, Relaxed)
            {
                Ok(_) => return Some(cur - micros),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The floor's grant: needs the floor's time-based allowance and, when the floor is gated,
    /// its credit from successes. The credit is taken first and given back if the allowance
    /// says no, so neither is spent for a retry that is not granted.
    fn floor_take(&self, cost: i64) -> bool {
        let Some(floor) = &self.floor else {
            return false;
        };
        match &self.floor_credit {
            None => floor.try_take(cost),
            Some(credit) => {
                if !credit.take(cost) {
                    return false;
                }
                if floor.try_take(cost) {
                    return true;
                }
                credit.add(cost);
                false
            }
        }
    }

    fn publish(&self, balance: i64) {
        self.series.tokens.set(balance as f64 / MICROS);
    }
}

impl RetryBudget {
    /// Starts a builder for a budget named `name` (the metrics label), with the defaults: ratio
    /// 0.01, a floor of 1 retry per second that lends only against successes, a cap of 10
    /// tokens, a timeout cost of 2 and no initial tokens.
    pub fn builder(name: impl Into<String>) -> RetryBudgetBuilder {
        RetryBudgetBuilder::new(name.into())
    }

    /// The name the budget's metrics carry.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The earned tokens the budget holds now (without the floor's allowance).
    pub fn tokens(&self) -> f64 {
        self.inner.balance.load(Relaxed) as f64 / MICROS
    }

    /// The floor's allowance banked now, in tokens (0 when there is no floor).
    pub fn floor_tokens(&self) -> f64 {
        self.inner.floor.as_ref().map_or(0.0, Floor::available)
    }

    /// The budget's totals so far.
    pub fn stats(&self) -> RetryBudgetStats {
        let i = &self.inner;
        RetryBudgetStats {
            deposits: i.deposits.load(Relaxed),
            granted: i.granted.load(Relaxed),
            denied: i.denied.load(Relaxed),
            refunded: i.refunded.load(Relaxed),
            tokens: self.tokens(),
        }
    }

    /// The tokens a success deposits.
    pub fn ratio(&self) -> f64 {
        self.inner.deposit as f64 / MICROS
    }

    /// The floor, in retries per second.
    pub fn min_per_second(&self) -> f64 {
        self.inner.floor.as_ref().map_or(0.0, |f| f.per_second)
    }

    /// True when the floor lends only against successes seen
    /// ([`floor_needs_successes`](RetryBudgetBuilder::floor_needs_successes)).
    pub fn floor_needs_successes(&self) -> bool {
        self.inner.floor_credit.is_some()
    }

    /// The floor's credit from successes, in tokens: what it may still lend, time allowing
    /// (0 when the floor is not gated or there is none).
    pub fn floor_credit(&self) -> f64 {
        self.inner
            .floor_credit
            .as_ref()
            .map_or(0.0, |c| c.micros.load(Relaxed) as f64 / MICROS)
    }

    /// The most earned tokens the budget stores.
    pub fn max_tokens(&self) -> f64 {
        self.inner.cap as f64 / MICROS
    }

    /// What a retry of `kind` costs, in tokens.
    pub fn cost(&self, kind: RetryKind) -> f64 {
        self.inner.cost(kind) as f64 / MICROS
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        let i = &*self.inner;
        i.deposits.fetch_add(1, Relaxed);
        let before = i.balance.load(Relaxed);
        let after = i.add(i.deposit);
        if after != before {
            i.publish(after);
        }
        if let Some(credit) = &i.floor_credit {
            credit.add(i.error_cost);
        }
    }

    fn try_withdraw(&self, kind: RetryKind) -> bool {
        let i = &*self.inner;
        let cost = i.cost(kind);
        let granted = match i.take(cost) {
            Some(balance) => {
                i.publish(balance);
                true
            }
            None => i.floor_take(cost),
        };
        if granted {
            i.granted.fetch_add(1, Relaxed);
            i.series.allowed.increment(1);
        } else {
            i.denied.fetch_add(1, Relaxed);
            i.series.denied.increment(1);
        }
        granted
    }

    /// Refunds go to the earned balance (up to the cap), whichever source paid: the total
    /// granted, net of refunds, stays within the budget's bound either way.
    fn refund(&self, kind: RetryKind) {
        let i = &*self.inner;
        i.refunded.fetch_add(1, Relaxed);
        let after = i.add(i.cost(kind));
        i.publish(after);
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("name", &self.inner.name)
            .field("ratio", &self.ratio())
            .field("min_per_second", &self.min_per_second())
            .field("max_tokens", &self.max_tokens())
            .field("tokens", &self.tokens())
            .finish()
    }
}

/// A [`RetryBudget`]'s totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetStats {
    /// Successes deposited.
    pub deposits: u64,
    /// Retries allowed (including any refunded later).
    pub granted: u64,
    /// Retries denied.
    pub denied: u64,
    /// Retries allowed, then cancelled before they were sent, and refunded.
    pub refunded: u64,
    /// Earned tokens held now.
    pub tokens: f64,
}

/// Builds a [`RetryBudget`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct RetryBudgetBuilder {
    name: String,
    ratio: f64,
    min_per_second: f64,
    max_tokens: f64,
    timeout_cost: f64,
    initial_tokens: f64,
    floor_needs_successes: bool,
}

impl RetryBudgetBuilder {
    fn new(name: String) -> Self {
        RetryBudgetBuilder {
            name,
            ratio: 0.01,
            min_per_second: 1.0,
            max_tokens: 10.0,
            timeout_cost: 2.0,
            initial_tokens: 0.0,
            floor_needs_successes: true,
        }
    }

    /// Tokens each success deposits, so the share of successes that may be retried. In
    /// [0.000001, 1]; kept exactly to six decimals. Default 0.01.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// The floor: retries per second allowed even with no earned tokens, so a quiet client can
    /// still retry. In [0, 1000000]; 0 turns the floor off. Default 1.
    pub fn min_per_second(mut self, per_second: f64) -> Self {
        self.min_per_second = per_second;
        self
    }

    /// The most earned tokens the budget stores. At least the timeout cost, at most 10⁹.
    /// Default 10.
    pub fn max_tokens(mut self, max_tokens: f64) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// What a retry after a timeout costs, in tokens (a retry after an error costs 1). In
    /// [1, max_tokens]. Default 2.
    pub fn timeout_cost(mut self, cost: f64) -> Self {
        self.timeout_cost = cost;
        self
    }

    /// Whether the floor lends only against successes: one token per success seen, holding at
    /// most the floor's bank (`max(floor × 1 s, timeout_cost)`), so a client whose calls all
    /// fail gets no retries from the floor, while a quiet client that mostly succeeds still
    /// retries up to the floor's rate. Default true. With false, the floor is tower's: a fixed
    /// allowance per second, which at 10 requests/s and a floor of 1/s adds 10% to the load
    /// of an outage at every level that retries.
    pub fn floor_needs_successes(mut self, needs: bool) -> Self {
        self.floor_needs_successes = needs;
        self
    }

    /// Tokens the budget starts with. In [0, max_tokens]. Default 0: a new client earns its
    /// first retry (tower's default `TpsBudget` starts with about 100 free retries).
    pub fn initial_tokens(mut self, tokens: f64) -> Self {
        self.initial_tokens = tokens;
        self
    }

    /// Checks the values and builds the budget, registering its metrics.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        let ratio = check(
            "ratio",
            self.ratio,
            |r| (1e-6..=1.0).contains(r),
            "in [0.000001, 1]",
        )?;
        let floor = check(
            "min_per_second",
            self.min_per_second,
            |f| (0.0..=MAX_FLOOR).contains(f),
            "in [0, 1000000]",
        )?;
        let max_tokens = check(
            "max_tokens",
            self.max_tokens,
            |m| (1.0..=MAX_TOKENS_LIMIT).contains(m),
            "in [1, 1000000000]",
        )?;
        let timeout_cost = check(
            "timeout_cost",
            self.timeout_cost,
            |c| *c >= 1.0 && *c <= max_tokens,
            "at least 1 and at most max_tokens",
        )?;
        let initial = check(
            "initial_tokens",
            self.initial_tokens,
            |t| *t >= 0.0 && *t <= max_tokens,
            "in [0, max_tokens]",
        )?;
        let micros = |t: f64| (t * MICROS).round() as i64;
        let bank = (floor * 1.0).max(timeout_cost);
        let floor_credit = (floor > 0.0 && self.floor_needs_successes).then(|| Credit {
            micros: AtomicI64::new(0),
            cap: micros(bank),
        });
        let floor = (floor > 0.0).then(|| Floor::new(floor, bank));
        let inner = Inner {
            series: Series::register(&self.name),
            name: self.name,
            balance: AtomicI64::new(micros(initial)),
            deposit: micros(ratio),
            cap: micros(max_tokens),
            error_cost: micros(1.0),
            timeout_cost: micros(timeout_cost),
            floor,
            floor_credit,
            deposits: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            refunded: AtomicU64::new(0),
        };
        inner.publish(micros(initial));
        Ok(RetryBudget {
            inner: Arc::new(inner),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn no_floor(ratio: f64) -> RetryBudget {
        RetryBudget::builder("t")
            .ratio(ratio)
            .min_per_second(0.0)
            .max_tokens(1000.0)
            .build()
            .unwrap()
    }

    #[test]
    fn any_ratio_grants_exactly_that_share() {
        // tower's TpsBudget grants 33% at 0.3 and 100% at 0.6.
        for (ratio, successes, expected) in [(0.3, 1000, 300), (0.6, 1000, 600), (0.01, 1000, 10)] {
            let b = no_floor(ratio);
            for _ in 0..successes {
                b.deposit();
            }
            let granted = (0..successes)
                .filter(|_| b.try_withdraw(RetryKind::AfterError))
                .count();
            assert_eq!(granted, expected, "ratio {ratio}");
        }
    }

    #[test]
    fn a_new_budget_is_empty_and_the_cap_holds() {
        let b = RetryBudget::builder("t")
            .ratio(1.0)
            .min_per_second(0.0)
            .max_tokens(5.0)
            .build()
            .unwrap();
        assert!(!b.try_withdraw(RetryKind::AfterError));
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.tokens(), 5.0);
        assert!(b.try_withdraw(RetryKind::AfterTimeout));
        assert_eq!(b.tokens(), 3.0);
        b.refund(RetryKind::AfterTimeout);
        assert_eq!(b.tokens(), 5.0);
        let s = b.stats();
        assert_eq!(
            (s.granted, s.denied, s.refunded, s.deposits),
            (1, 1, 1, 100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_accrues_with_time_and_banks_little() {
        let b = RetryBudget::builder("t")
            .min_per_second(2.0)
            .floor_needs_successes(false)
            .build()
            .unwrap();
        assert!(
            !b.try_withdraw(RetryKind::AfterError),
            "the floor starts empty"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.try_withdraw(RetryKind::AfterError));
        assert!(!b.try_withdraw(RetryKind::AfterError));
        // An hour of quiet banks max(2/s × 1 s, timeout cost 2) = 2 tokens, not 7200.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.floor_tokens(), 2.0);
        let granted = (0..100)
            .filter(|_| b.try_withdraw(RetryKind::AfterError))
            .count();
        assert_eq!(granted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gated_floor_lends_one_token_per_success_up_to_its_bank() {
        let b = RetryBudget::builder("t")
            .min_per_second(2.0)
            .build()
            .unwrap();
        assert!(b.floor_needs_successes());
        // A minute of calls that all fail: time alone lends nothing.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.floor_tokens(), 2.0, "the time allowance is there");
        assert!(!b.try_withdraw(RetryKind::AfterError), "but no success yet");
        // One success lends one retry (the ratio's 0.01 is far from a token).
        b.deposit();
        assert_eq!(b.floor_credit(), 1.0);
        assert!(b.try_withdraw(RetryKind::AfterError));
        assert!(!b.try_withdraw(RetryKind::AfterError));
        // A retry after a timeout costs 2: it needs two successes.
        b.deposit();
        assert!(!b.try_withdraw(RetryKind::AfterTimeout));
        assert_eq!(b.floor_credit(), 1.0, "a refused grant keeps the credit");
        b.deposit();
        // (The time allowance too: half of its 1 s bank went on the first retry.)
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_withdraw(RetryKind::AfterTimeout));
        // Credit is capped at the bank (2 tokens), and the time allowance still binds: after
        // many successes, one second lends 2 retries, not 100.
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.floor_credit(), 2.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let granted = (0..100)
            .filter(|_| b.try_withdraw(RetryKind::AfterError))
            .count();
        // 1.03 earned tokens (103 successes × 0.01, less nothing spent from them) pay one more.
        assert_eq!(granted, 3);
        assert_eq!(b.floor_credit(), 0.0);
    }

    #[test]
    fn the_builder_rejects_bad_values() {
        let field = |b: RetryBudgetBuilder| b.build().unwrap_err().field();
        let b = || RetryBudget::builder("t");
        assert_eq!(field(b().ratio(0.0)), "ratio");
        assert_eq!(field(b().ratio(1.5)), "ratio");
        assert_eq!(field(b().ratio(f64::NAN)), "ratio");
        assert_eq!(field(b().min_per_second(-1.0)), "min_per_second");
        assert_eq!(field(b().max_tokens(0.5)), "max_tokens");
        assert_eq!(field(b().timeout_cost(0.5)), "timeout_cost");
        assert_eq!(field(b().max_tokens(3.0).timeout_cost(4.0)), "timeout_cost");
        assert_eq!(field(b().initial_tokens(11.0)), "initial_tokens");
        assert_eq!(field(b().initial_tokens(f64::INFINITY)), "initial_tokens");
    }

    #[test]
    fn clones_share_one_budget() {
        let a = no_floor(0.5);
        let b = a.clone();
        a.deposit();
        a.deposit();
        assert!(b.try_withdraw(RetryKind::AfterError));
        assert!(!a.try_withdraw(RetryKind::AfterError));
    }
}
