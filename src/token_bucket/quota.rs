//! The bucket as a retry quota, charged like the AWS SDKs' standard retry mode.

use super::TokenBucket;
use crate::retry::{Budget, RetryKind};

/// Tokens a retry takes from the quota.
pub const RETRY_COST: u32 = 5;
/// Tokens a retry after a timeout takes: the attempt it repeats may still be running.
pub const TIMEOUT_RETRY_COST: u32 = 10;
/// Tokens a success gives back.
pub const SUCCESS_REFUND: u32 = 1;

fn cost(kind: RetryKind) -> u32 {
    match kind {
        RetryKind::AfterError => RETRY_COST,
        RetryKind::AfterTimeout => TIMEOUT_RETRY_COST,
    }
}

/// AWS standard mode: a retry takes 5 tokens (10 after a timeout), a success gives 1 back, up to
/// the capacity; [`TokenBucket::retry_quota`] builds the standard 500-token quota, which time
/// does not refill. Any bucket works: one with a rate also earns retries with time.
///
/// ```
/// use backstop::retry::{Budget, RetryKind};
/// use backstop::token_bucket::TokenBucket;
///
/// let quota = TokenBucket::retry_quota("s3");
/// let retries = (0..200).filter(|_| quota.try_withdraw(RetryKind::AfterError)).count();
/// assert_eq!(retries, 100); // 500 / 5
/// quota.deposit();
/// assert_eq!(quota.tokens(), 1.0);
/// ```
impl Budget for TokenBucket {
    fn deposit(&self) {
        self.add(SUCCESS_REFUND);
    }

    fn try_withdraw(&self, kind: RetryKind) -> bool {
        self.try_acquire(cost(kind))
    }

    fn refund(&self, kind: RetryKind) {
        self.add(cost(kind));
    }
}
