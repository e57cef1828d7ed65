//! Hedged requests: when an answer is late, send a duplicate (or a few, one delay apart) and
//! take the first success.
//!
//! A request still unanswered after the usual latency has most likely hit a slow server, a
//! garbage-collection pause or a full queue; a second copy sent then usually answers in the
//! usual time (Dean and Barroso, "The Tail at Scale": hedging after the 95th percentile cut the
//! 99.9th percentile from 1,800 ms to 74 ms for 2% more requests).
//!
//! How [`HedgeLayer`] works:
//! - **Delay**: the [`LatencyTracker`]'s 95th percentile of first-copy latencies (in
//!   microseconds, over the last one to two windows), never below a floor (1 ms); no hedge at
//!   all before the tracker holds `min_samples` latencies. Or a [fixed
//!   delay](HedgeLayerBuilder::fixed_delay).
//! - **One duplicate by default, up to four**: with [`max_copies`](HedgeLayerBuilder::max_copies)
//!   `k` (1 to [`MAX_COPIES`]), copy `i` goes out one further delay after copy `i − 1` (the same
//!   percentile, or a [fixed delay](HedgeLayerBuilder::fixed_delay), or a
//!   [schedule](HedgeLayerBuilder::delay_schedule)) while none has answered. Copies go out only
//!   when the request may run twice at once (for HTTP a safe method or the retry layer's
//!   [`Idempotent`] extension, [`HedgeRequest::is_idempotent`], or a
//!   [predicate](HedgeLayerBuilder::hedge_if)), while its body can still be replayed, before
//!   its [deadline](crate::timeout::Deadline) (the request's, else the
//!   [handler's scope](crate::context)), and while the [`HedgeBudget`] pays for each one: the
//!   default [`HedgeBucket`] earns 0.05 copy per request and saves up to 500 (what 10,000
//!   requests earn; it starts with 5), so over any stretch of requests copies ≤ 5% ×
//!   requests + 500 (+ 5 from the start), whatever the latency does and whatever `k` is.
//!   [`SharedWithRetries`] draws hedges from the retry layer's budget instead, so retries and
//!   hedges share one cap on extra load (with [`Both`], from a local bucket and the shared
//!   budget).
//! - **Fan-out**: a request that waits for N calls is slow when any call is; with each copy
//!   slow with probability p, that is 1 − (1 − p^(k+1))^N with `k` copies per call. One copy is
//!   enough while N·p² is below the tail you care about (10 calls at 1% slow: 0.1% of
//!   requests); at N = 100, p = 1% one copy still leaves 1% of requests slow and two leave
//!   0.01%. Hedge each call, not the request, through one layer so the calls share its budget:
//!   [`fan_out`] does that, and [`copies_needed`] gives the least `k` for a percentile.
//! - **Standing down under overload**: a duplicate adds load, so it must not go out when the
//!   downstream is full. Two rules, both smooth rather than a switch:
//!   - every overload answer ([`Outcome::Overload`](crate::classify::Outcome::Overload):
//!     backstop's `Overloaded`, a 429, a 503 with `Retry-After`) takes a whole token from the
//!     bucket ([`HedgeBudget::overloaded`]): while more than 5% of answers are overload it
//!     stays empty, and in between hedges fall to about 5% − the overload share;
//!   - a duplicate goes out only while the share of recent requests still running at their
//!     (first) delay (an average over about the last 16, counting the one asking) is at most
//!     [`max_late_share`](HedgeLayerBuilder::max_late_share) (default 0.25 at the p95: 20
//!     points above the 5% a p95 delay leaves late). Hedging helps a request that is slow on
//!     its own ("The Tail at Scale": slowness is per request); when most requests are late at
//!     once the downstream is slow for everyone, a duplicate cannot be faster, and it only
//!     adds load. The share moves per request, so even a burst arriving all at once stops
//!     after four or five duplicates, before any overload answer is back to drain the bucket.
//!     A further copy asks the same share (without counting its request again), so by the
//!     time a late request's second copy is due in a burst, the share has crossed the bound:
//!     more copies allowed do not mean more load when the downstream is slow for everyone.
//!     A copy that fails, overload or not, stops the copies still to come.
//!
//!   With both, a burst of 300 requests into a full server, after calm traffic filled the
//!   bucket to 499 tokens, sent 3 duplicates (against 300 with a bucket that ignores both).
//! - **First success wins**; the other copies are dropped, which cancels them. A failure does
//!   not win over a copy still running: it is kept, and returned only if every copy fails (the
//!   first failure is returned). tower's `Hedge` returns whichever copy completes first, so a
//!   fast error beats a slow success there.
//! - **No duplicate after a failure**: when the first copy fails before the delay, the failure is
//!   returned at once: an overload answer must not turn into more load, and any other failure is
//!   for the retry layer above to judge, with its own budget.
//! - **Constant work** ([`constant_work`](HedgeLayerBuilder::constant_work)): every request goes
//!   out twice at once, the duplicate marked with [`HedgeCopy`] (the first copy unmarked) so a
//!   balancer sends them to different endpoints, as DynamoDB's request routers do: the load stays the same when an endpoint fails.
//!
//! Latencies recorded: the first copy's, when it completes (an overload refusal is not
//! recorded). When the duplicate wins, the first copy is cancelled: all that is known is that it
//! was still running, and it is recorded as such, a censored latency
//! ([`LatencyTracker::record_at_least`]); when the budget refuses a duplicate, the first copy is
//! recorded the same way at once, at the delay. The percentile is then the Kaplan–Meier
//! estimate, which counts each cancelled copy for what is known of it. This matters: tower's
//! `Hedge` records completed copies only, which pulls its percentile down (the slow copies are
//! the ones cancelled) and makes it hedge more than asked, and a copy counted at some guessed
//! latency instead leaves the percentile jumping around the delay. In the `hedge_tail`
//! example's heavy-tailed backend (no budget limit, read once a second after the first 25 s)
//! the delay (true p95: 3.16 s) stayed within 2.9–3.4 s (standard deviation 4%) this way,
//! against 2.8–5.8 s (11%) with cancelled copies counted at twice their running time; there, a
//! delay 7% above the p95 makes the hedged p99 about 7% longer.
//!
//! Put the hedge layer below the retry layer and above a per-attempt timeout:
//! `retry → hedge → timeout(attempt) → transport`.
//!
//! ```
//! use std::time::Duration;
//! use backstop::hedge::HedgeLayer;
//! use backstop::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let hedge = HedgeLayer::builder("hedge")
//!     .hedge_any() // every request here is a read
//!     .min_samples(10)
//!     .max_extra_load(0.5)
//!     .build()?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! let mut svc = ServiceBuilder::new().layer(hedge).service_fn(move |key: u32| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!     async move {
//!         // Call number 20 is stuck for 10 s; every other call takes 5 ms.
//!         let ms = if n == 20 { 10_000 } else { 5 };
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok::<_, BoxError>(key)
//!     }
//! });
//! for key in 0..20 {
//!     svc.ready().await?.call(key).await?;
//! }
//! let start = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await?.call(99).await?, 99);
//! // Hedged after the p95 (5 ms, to tokio's 1 ms timer tick), answered by the duplicate 5 ms
//! // later, instead of after 10 s.
//! assert!(start.elapsed() <= Duration::from_millis(11));
//! # Ok(())
//! # }
//! ```

mod budget;
mod fan_out;
mod future;
mod late;
mod layer;
mod request;
mod service;
mod tracker;

pub use self::budget::{
    Both, HedgeBucket, HedgeBudget, STARTING_TOKENS, SharedWithRetries, Unlimited,
};
pub use self::fan_out::{copies_needed, fan_out};
pub use self::future::ResponseFuture;
pub use self::layer::{HedgeLayer, HedgeLayerBuilder, MAX_COPIES};
pub use self::request::{
    AnyRequest, HedgeCopy, HedgeFn, HedgeRequest, Hedgeable, Idempotent, MarkedIdempotent,
};
pub use self::service::HedgeService;
pub use self::tracker::{LatencyTracker, LatencyTrackerBuilder};
