//! A request that fans out to many calls, hedged per call under one budget.

use std::future::Future;

use futures::future::try_join_all;
use tower::ServiceExt;
use tower_service::Service;

use super::layer::MAX_COPIES;
use crate::error::BoxError;

/// Sends every request of `requests` through a clone of `svc` at once and answers when all have
/// answered, in the order given; the first error ends the fan-out and drops (cancels) the calls
/// still running.
///
/// Put a [`HedgeLayer`](super::HedgeLayer) in `svc` and every call is hedged on its own while
/// all share the layer's tracker and budget: the clones of one service share both, so the
/// budget's cap on extra calls holds over the calls of every fan-out together. That is the
/// pattern for a request that waits for N calls: hedge each call, not the whole request (a
/// duplicate of the whole request repeats the N − 1 calls that were on time).
///
/// How many copies a call needs depends on N: with each call slow with probability p, a request
/// waiting for N calls is slow with probability 1 − (1 − p^(k+1))^N with `k` extra copies per
/// call (when copies are independent). One copy is enough while N·p² stays below the tail you
/// care about; [`copies_needed`] gives the least `k` for a percentile.
///
/// ```
/// use std::time::Duration;
/// use backstop::hedge::{HedgeLayer, copies_needed, fan_out};
/// use backstop::BoxError;
/// use tower::{Layer, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// // 100 calls per request, 1% of calls slow: one copy leaves 1% of requests slow, two copies
/// // 0.01%, under the 0.1% a p99.9 allows.
/// assert_eq!(copies_needed(100, 0.01, 0.999), Some(2));
/// let hedge = HedgeLayer::builder("shards")
///     .hedge_any()
///     .fixed_delay(Duration::from_millis(20))
///     .max_copies(2)
///     .build()?;
/// let shard = hedge.layer(service_fn(|key: u32| async move {
///     tokio::time::sleep(Duration::from_millis(10)).await;
///     Ok::<_, BoxError>(key * 2)
/// }));
/// let answers = fan_out(&shard, 0..100).await?;
/// assert_eq!(answers.len(), 100);
/// assert_eq!(answers[7], 14);
/// # Ok(())
/// # }
/// ```
pub fn fan_out<S, Req, I>(
    svc: &S,
    requests: I,
) -> impl Future<Output = Result<Vec<S::Response>, BoxError>> + use<S, Req, I>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    I: IntoIterator<Item = Req>,
{
    let calls: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let call = svc.clone().oneshot(req);
            async move { call.await.map_err(Into::into) }
        })
        .collect();
    try_join_all(calls)
}

/// The least number of extra copies per call, 1 to 4, that keeps a request waiting for `calls`
/// calls under its `quantile` (0.999 for the p99.9), when each copy is slow with probability
/// `p_slow` on its own: the least `k` with 1 − (1 − p_slow^(k+1))^calls ≤ 1 − `quantile`.
/// `None` when even 4 are not enough (or the inputs are out of range: `calls` 0, a probability
/// outside 0..1).
///
/// `p_slow` is the share of copies still running when the next copy is due: with the delay at
/// the p95 of call latencies, at most 5%, and for a backend whose slowness is rare and long
/// (1% of calls at 1 s, the rest at 10 ms) just that 1%. Copies are assumed independent: a
/// duplicate sent to the same overloaded server is not, which is why a balancer below should
/// send each [`HedgeCopy`](super::HedgeCopy) to another endpoint.
///
/// ```
/// use backstop::hedge::copies_needed;
///
/// // Small N·p²: one copy is enough (10 calls, 1% slow: 0.1% of requests keep a slow call).
/// assert_eq!(copies_needed(10, 0.01, 0.99), Some(1));
/// // The Tail at Scale's 100-way fan-out at p99.9 with 1% slow calls: two.
/// assert_eq!(copies_needed(100, 0.01, 0.999), Some(2));
/// // 1,000 calls with the delay at the p95 (5% of copies still running at it), p99.9: four.
/// assert_eq!(copies_needed(1_000, 0.05, 0.999), Some(4));
/// ```
pub fn copies_needed(calls: u64, p_slow: f64, quantile: f64) -> Option<usize> {
    if calls == 0 || !(0.0..1.0).contains(&p_slow) || !(0.0..1.0).contains(&quantile) {
        return None;
    }
    let allowed = 1.0 - quantile;
    (1..=MAX_COPIES).find(|&k| {
        let slow_call = p_slow.powi(k as i32 + 1);
        // 1 − (1 − x)^N, computed without losing a small x to rounding.
        let slow_request = -(calls as f64 * (-slow_call).ln_1p()).exp_m1();
        slow_request <= allowed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_n_and_the_tail() {
        assert_eq!(copies_needed(1, 0.05, 0.99), Some(1));
        assert_eq!(copies_needed(100, 0.01, 0.99), Some(1));
        assert_eq!(copies_needed(100, 0.01, 0.999), Some(2));
        assert_eq!(copies_needed(100, 0.05, 0.999), Some(3));
        assert_eq!(copies_needed(1_000, 0.05, 0.999), Some(4));
        assert_eq!(copies_needed(10_000, 0.05, 0.999), None);
        // Half the copies slow: not even 4 copies save a 1,000-call request.
        assert_eq!(copies_needed(1_000, 0.5, 0.99), None);
        assert_eq!(copies_needed(0, 0.01, 0.99), None);
        assert_eq!(copies_needed(10, f64::NAN, 0.99), None);
        assert_eq!(copies_needed(10, 0.01, 1.0), None);
    }
}
