use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::error::{ConfigError, check};
use crate::retry::{Budget, RetryKind};

/// Tokens are kept in millionths, so a fraction given with up to six decimals is earned exactly.
const MICROS: f64 = 1_000_000.0;
const ONE: i64 = 1_000_000;

/// An allowance of hedges, which the [`HedgeLayer`](super::HedgeLayer) asks each time a request
/// is late and it would send a duplicate.
///
/// [`HedgeBucket`] is the default. With [`Both`], a hedge needs a token from two budgets (a
/// local one and a client-wide one), as Finagle's backup requests draw on both.
pub trait HedgeBudget {
    /// Records one request sent through the layer (hedged or not).
    fn deposit(&self);
    /// Takes the price of one hedge; false when the budget cannot pay it.
    fn try_withdraw(&self) -> bool;
    /// Gives back the price of a hedge that was withdrawn but never sent.
    fn refund(&self);
    /// Records an overload answer from downstream (either copy): the budget should pay for
    /// fewer hedges while the downstream refuses work. Default: nothing.
    fn overloaded(&self) {}
}

impl<T: HedgeBudget + ?Sized> HedgeBudget for Arc<T> {
    fn deposit(&self) {
        (**self).deposit()
    }
    fn try_withdraw(&self) -> bool {
        (**self).try_withdraw()
    }
    fn refund(&self) {
        (**self).refund()
    }
    fn overloaded(&self) {
        (**self).overloaded()
    }
}

/// Hedges at most a set fraction of requests: every request earns `fraction` of a token, a hedge
/// costs one, and a hedge is sent only when a whole token is there; every overload answer
/// takes a whole token back.
///
/// The bucket holds at most `burst` tokens and starts with a few ([`STARTING_TOKENS`], 5, or
/// the burst if smaller), so over any stretch of requests from the start, **hedges ≤
/// `fraction` × requests + 5**, and over any later stretch ≤ `fraction` × requests + `burst`.
/// Lock-free (compare-and-swap on fixed-point tokens, in millionths; no rounding of the
/// fraction).
///
/// Why a large burst: with the delay at the p95 and a 5% budget, hedges are wanted for 5% of
/// requests on average, exactly what the bucket earns. A small bucket is then empty about as
/// often as not, and every hedge refused leaves a slow request in the tail. The default burst is
/// what 10,000 requests earn (500 tokens at 5%, at least 1): in the `hedge_tail` example's
/// heavy-tailed backend (lognormal, σ = 3.5), a burst of 10 refused 972 hedges in 120,000
/// requests and cut the p99.9 only 2.6×, against 11.7× with the default burst.
///
/// Why it starts nearly empty and loses a token per overload answer: a full bucket at the
/// start, or one saved up during calm traffic, is a stock of duplicates that a burst can spend
/// at once, exactly when the downstream is full (a bucket starting with 500 tokens sent about
/// 300 duplicates for a burst of 300 requests against a full server). Tokens are earned by
/// requests that were sent, and an overload answer takes back what twenty requests earn (at
/// 5%): while more than `fraction` of the answers are overload the bucket stays empty, and in
/// between hedges fall smoothly, to about `fraction` − the overload share of requests. A
/// bucket with `fraction` 0 starts empty: no hedge at all.
///
/// A cheap [`Clone`] handle: clones share one bucket.
///
/// ```
/// use backstop::hedge::{HedgeBucket, HedgeBudget};
///
/// let bucket = HedgeBucket::with_burst(0.05, 10.0)?;
/// // A few tokens at the start: 5 hedges, then none.
/// assert_eq!((0..20).filter(|_| bucket.try_withdraw()).count(), 5);
/// for _ in 0..100 {
///     bucket.deposit();
/// }
/// // 5% of 100 requests, less one token per overload answer.
/// bucket.overloaded();
/// bucket.overloaded();
/// let granted = (0..10).filter(|_| bucket.try_withdraw()).count();
/// assert_eq!(granted, 3);
/// # Ok::<(), backstop::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct HedgeBucket {
    inner: Arc<BucketInner>,
}

struct BucketInner {
    balance: AtomicI64,
    earn: i64,
    cap: i64,
    granted: AtomicU64,
    denied: AtomicU64,
}

impl fmt::Debug for HedgeBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBucket")
            .field("tokens", &self.tokens())
            .field("granted", &self.granted())
            .field("denied", &self.denied())
            .finish()
    }
}

/// The tokens a [`HedgeBucket`] holds at the start (or its burst, if smaller): a few hedges for
/// the first slow requests, not a stock a burst could spend at once.
pub const STARTING_TOKENS: f64 = 5.0;

/// The default burst is what this many requests earn.
pub(super) const BURST_REQUESTS: f64 = 10_000.0;

/// The default burst for `fraction`: what [`BURST_REQUESTS`] requests earn, at least 1 token.
pub(super) fn default_burst(fraction: f64) -> f64 {
    (fraction * BURST_REQUESTS).clamp(1.0, 1e6)
}

impl HedgeBucket {
    /// A bucket earning `fraction` (in `0.0..=1.0`) of a hedge per request, with the default
    /// burst: what 10,000 requests earn (`fraction` × 10,000 tokens, at least 1).
    pub fn new(fraction: f64) -> Result<Self, ConfigError> {
        let burst = if fraction.is_finite() {
            default_burst(fraction)
        } else {
            1.0
        };
        Self::with_burst(fraction, burst)
    }

    /// A bucket earning `fraction` per request and holding at most `burst` tokens (1 to 10⁶),
    /// with [`STARTING_TOKENS`] (or `burst` if smaller) at the start (none when `fraction` is
    /// 0).
    pub fn with_burst(fraction: f64, burst: f64) -> Result<Self, ConfigError> {
        Self::with_start(fraction, burst, STARTING_TOKENS)
    }

    /// A bucket earning `fraction` per request, holding at most `burst` tokens (1 to 10⁶) and
    /// `start` tokens at the start (0 to `burst`; none when `fraction` is 0).
    pub fn with_start(fraction: f64, burst: f64, start: f64) -> Result<Self, ConfigError> {
        let fraction = check(
            "max_extra_load",
            fraction,
            |f| (0.0..=1.0).contains(f),
            "a fraction in 0.0..=1.0",
        )?;
        let burst = check(
            "burst",
            burst,
            |b| (1.0..=1e6).contains(b),
            "between 1 and 1,000,000 tokens",
        )?;
        let start = check(
            "starting_tokens",
            start,
            |s| (0.0..=1e6).contains(s),
            "between 0 and 1,000,000 tokens",
        )?
        .min(burst);
        let earn = (fraction * MICROS).round() as i64;
        let cap = (burst * MICROS).round() as i64;
        let start = (start * MICROS).round() as i64;
        Ok(HedgeBucket {
            inner: Arc::new(BucketInner {
                balance: AtomicI64::new(if earn > 0 { start } else { 0 }),
                earn,
                cap,
                granted: AtomicU64::new(0),
                denied: AtomicU64::new(0),
            }),
        })
    }

    /// Tokens held now.
    pub fn tokens(&self) -> f64 {
        self.inner.balance.load(Relaxed) as f64 / MICROS
    }

    /// Hedges granted so far (net of refunds).
    pub fn granted(&self) -> u64 {
        self.inner.granted.load(Relaxed)
    }

    /// Hedges refused so far.
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Relaxed)
    }

    fn add(&self, amount: i64) {
        let cap = self.inner.cap;
        let _ = self
            .inner
            .balance
            .fetch_update(Relaxed, Relaxed, |b| Some((b + amount).min(cap)));
    }
}

impl HedgeBudget for HedgeBucket {
    fn deposit(&self) {
        self.add(self.inner.earn);
    }

    fn try_withdraw(&self) -> bool {
        let ok = self
            .inner
            .balance
            .fetch_update(Relaxed, Relaxed, |b| (b >= ONE).then_some(b - ONE))
            .is_ok();
        if ok {
            self.inner.granted.fetch_add(1, Relaxed);
        } else {
            self.inner.denied.fetch_add(1, Relaxed);
        }
        ok
    }

    fn refund(&self) {
        self.add(ONE);
        let _ = self
            .inner
            .granted
            .fetch_update(Relaxed, Relaxed, |g| g.checked_sub(1));
    }

    fn overloaded(&self) {
        // Never below zero: the debt of a long overload would keep hedging off long after the
        // downstream recovered, a cliff of its own; the share of late requests guards the way
        // back.
        let _ = self
            .inner
            .balance
            .fetch_update(Relaxed, Relaxed, |b| Some((b - ONE).max(0)));
    }
}

/// Two budgets that must both pay for a hedge: `local` first, then `shared`; when `shared`
/// refuses, `local` gets its token back. Deposits go to both.
#[derive(Debug, Clone)]
pub struct Both<A, B> {
    /// Asked first (usually this layer's own [`HedgeBucket`]).
    pub local: A,
    /// Asked second (usually a client-wide budget shared with retries).
    pub shared: B,
}

impl<A: HedgeBudget, B: HedgeBudget> HedgeBudget for Both<A, B> {
    fn deposit(&self) {
        self.local.deposit();
        self.shared.deposit();
    }
    fn try_withdraw(&self) -> bool {
        if !self.local.try_withdraw() {
            return false;
        }
        if self.shared.try_withdraw() {
            true
        } else {
            self.local.refund();
            false
        }
    }
    fn refund(&self) {
        self.local.refund();
        self.shared.refund();
    }
    fn overloaded(&self) {
        self.local.overloaded();
        self.shared.overloaded();
    }
}

/// No cap at all: every late request is hedged (what tower's `Hedge` does). For tests and
/// constant-work setups only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl HedgeBudget for Unlimited {
    fn deposit(&self) {}
    fn try_withdraw(&self) -> bool {
        true
    }
    fn refund(&self) {}
}

/// The retry layer's [`Budget`](crate::retry::Budget) as a hedge budget, so retries and hedges
/// share one cap on extra load (Finagle's backup requests draw on the client-wide retry
/// budget). Combine it with a local [`HedgeBucket`] through [`Both`] to cap hedges on their own
/// too.
///
/// A hedge is charged as a retry of `kind`, by default [`RetryKind::AfterTimeout`]: like a retry
/// after a timeout, it goes out while the first copy may still be running on a server. It earns
/// nothing: the [`RetryLayer`](crate::retry::RetryLayer) above deposits on each success, so put
/// both layers on the same budget (`retry → hedge`).
///
/// ```
/// use backstop::hedge::{Both, HedgeBucket, HedgeLayer, SharedWithRetries};
/// use backstop::retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::ConfigError> {
/// let client_budget = RetryBudget::builder("api").build()?;
/// let hedge = HedgeLayer::builder("hedge")
///     .budget(Both {
///         local: HedgeBucket::new(0.05)?,
///         shared: SharedWithRetries::new(client_budget.clone()),
///     })
///     .build_with()?;
/// # let _ = hedge;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SharedWithRetries<B> {
    budget: B,
    kind: RetryKind,
}

impl<B> SharedWithRetries<B> {
    /// Hedges charged as retries after a timeout.
    pub fn new(budget: B) -> Self {
        SharedWithRetries {
            budget,
            kind: RetryKind::AfterTimeout,
        }
    }

    /// Charge each hedge as a retry of `kind` instead.
    pub fn charged_as(mut self, kind: RetryKind) -> Self {
        self.kind = kind;
        self
    }

    /// The shared retry budget.
    pub fn get_ref(&self) -> &B {
        &self.budget
    }
}

impl<B: Budget> HedgeBudget for SharedWithRetries<B> {
    fn deposit(&self) {}
    fn try_withdraw(&self) -> bool {
        self.budget.try_withdraw(self.kind)
    }
    fn refund(&self) {
        self.budget.refund(self.kind)
    }
}
