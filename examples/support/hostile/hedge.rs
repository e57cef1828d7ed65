//! `burst_hedge_extra`: duplicates ÷ requests when a burst of 300 requests hits a server that is
//! already full and answering overload, on tokio's paused clock.
//!
//! The story: a client hedges a read-mostly service with backstop's defaults (delay at the
//! p95 of the last 10–20 s, a 5% budget). For 20 s the server is healthy (Poisson arrivals,
//! 1,000 a second; 8–12 ms, 1% of answers at 100 ms), so the tracker learns the delay (12 ms)
//! and the budget earns its tokens: hedges are wanted for about 1% of requests and 5% are
//! earned, so the bucket is at or near its cap (500) when the trouble starts. Then the server is
//! full: every call waits in its queue, 50 ms plus 1 ms per call already waiting, and is
//! answered `Overloaded` (shed, retry after 1 s), like a 503 with `Retry-After`. Into that, 300
//! requests arrive at once. Every one of them passes the 12 ms delay long before the first
//! answer comes back, so the budget alone would send a duplicate for each while its tokens
//! last: the baseline run (same traffic, the bucket's old behaviour: 500 tokens, no late-share
//! bound) shows it. backstop's defaults stand down because most requests are late at once.
//!
//! Deterministic: a fixed-seed xorshift generator, paused time.

// The assembled example may call only `measure`; the rest is for `describe` and the runner.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use backstop::hedge::{HedgeBucket, HedgeLayer};
use backstop::{BoxError, OverloadReason, Overloaded};
use tokio::time::{Instant, sleep, sleep_until};
use tower::{Layer, Service, ServiceExt};

/// Requests in the burst.
const BURST: u64 = 300;
/// Healthy requests before the burst (20 s at 1,000/s).
const WARM_UP: u64 = 20_000;

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Duplicates sent for the burst ÷ requests in the burst.
    pub extra: f64,
    /// Duplicates sent for the burst.
    pub duplicates: u64,
    /// Tokens in the hedge bucket when the burst arrived.
    pub tokens_before: f64,
    /// Duplicates sent during the warm-up ÷ warm-up requests.
    pub warm_up_extra: f64,
    /// The hedge delay when the burst arrived, in ms.
    pub delay_ms: f64,
    /// Burst requests answered (every one must get exactly one outcome).
    pub answered: u64,
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The server: healthy, or full (every call queued, then refused).
#[derive(Clone)]
struct Server {
    full: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    waiting: Arc<AtomicU64>,
    rng: Arc<std::sync::Mutex<Xorshift>>,
}

impl Service<u64> for Server {
    type Response = u64;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, id: u64) -> Self::Future {
        self.calls.fetch_add(1, Relaxed);
        if self.full.load(Relaxed) {
            // Full: the call waits behind those already queued, then is shed.
            let ahead = self.waiting.fetch_add(1, Relaxed);
            let waiting = self.waiting.clone();
            return Box::pin(async move {
                sleep(Duration::from_millis(50 + ahead)).await;
                waiting.fetch_sub(1, Relaxed);
                Err(Overloaded::new(OverloadReason::Shed)
                    .with_retry_after(Duration::from_secs(1))
                    .into())
            });
        }
        let (slow, u) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (rng.unit() < 0.01, rng.unit())
        };
        let latency = if slow {
            Duration::from_millis(100)
        } else {
            Duration::from_micros(8_000 + (u * 4_000.0) as u64)
        };
        Box::pin(async move {
            sleep(latency).await;
            Ok(id)
        })
    }
}

/// Runs the story; `refused_first` requests (at 1,000/s) find the server full before the burst
/// does, so their overload answers reach the layer first.
fn run(
    layer: HedgeLayer<
        backstop::classify::DefaultClassifier,
        HedgeBucket,
        backstop::hedge::AnyRequest,
    >,
    refused_first: u64,
) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async move {
        let server = Server {
            full: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(AtomicU64::new(0)),
            rng: Arc::new(std::sync::Mutex::new(Xorshift(0x9E37_79B9_7F4A_7C15))),
        };
        let bucket = layer.budget().clone();
        let probe = layer.clone();
        let mut svc = layer.layer(server.clone());
        let mut arrivals = Xorshift(0xD1B5_4A32_D192_ED03);

        // Healthy traffic: Poisson arrivals, 1,000/s.
        let mut next = Instant::now();
        let mut tasks = Vec::with_capacity(WARM_UP as usize);
        for id in 0..WARM_UP {
            let gap = -(1.0 - arrivals.unit()).ln() * 1e-3;
            next += Duration::from_secs_f64(gap);
            sleep_until(next).await;
            let fut = match svc.ready().await {
                Ok(s) => s.call(id),
                Err(_) => continue,
            };
            tasks.push(tokio::spawn(fut));
        }
        for t in tasks {
            let _ = t.await;
        }
        let warm_up_extra = server.calls.load(Relaxed) as f64 / WARM_UP as f64 - 1.0;
        let tokens_before = bucket.tokens();
        let delay_ms = probe
            .current_delay()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);

        // The server is full; maybe some ordinary traffic meets it first.
        server.full.store(true, Relaxed);
        let mut early = Vec::with_capacity(refused_first as usize);
        for i in 0..refused_first {
            let gap = -(1.0 - arrivals.unit()).ln() * 1e-3;
            next = Instant::now() + Duration::from_secs_f64(gap);
            sleep_until(next).await;
            if let Ok(s) = svc.ready().await {
                early.push(tokio::spawn(s.call(WARM_UP + BURST + i)));
            }
        }
        // Every early request's delay is over before the burst is counted.
        sleep(Duration::from_millis(50)).await;

        // The burst arrives at once.
        let before = server.calls.load(Relaxed);
        let mut tasks = Vec::with_capacity(BURST as usize);
        for id in 0..BURST {
            let fut = match svc.ready().await {
                Ok(s) => s.call(WARM_UP + id),
                Err(_) => continue,
            };
            tasks.push(tokio::spawn(fut));
        }
        let mut answered = 0;
        for t in tasks {
            if t.await.is_ok() {
                answered += 1;
            }
        }
        let duplicates = server.calls.load(Relaxed) - before - BURST;
        for t in early {
            let _ = t.await;
        }
        Figures {
            extra: duplicates as f64 / BURST as f64,
            duplicates,
            tokens_before,
            warm_up_extra,
            delay_ms,
            answered,
        }
    })
}

/// backstop's defaults (for any request type).
pub fn defaults() -> Figures {
    run(
        HedgeLayer::builder("hostile_hedge")
            .hedge_any()
            .build()
            .expect("the defaults are valid"),
        0,
    )
}

/// The bucket's former behaviour, for the baseline: 500 tokens at the start and no bound on
/// the share of late requests.
pub fn former() -> Figures {
    run(
        HedgeLayer::builder("hostile_hedge_former")
            .hedge_any()
            .starting_tokens(500.0)
            .max_late_share(1.0)
            .build()
            .expect("valid"),
        0,
    )
}

/// The overload answers alone: 500 tokens at the start, no late-share bound, and 200 requests
/// (0.2 s of traffic) refused before the burst arrives.
pub fn budget_only() -> Figures {
    run(
        HedgeLayer::builder("hostile_hedge_budget_only")
            .hedge_any()
            .starting_tokens(500.0)
            .max_late_share(1.0)
            .build()
            .expect("valid"),
        200,
    )
}

/// `burst_hedge_extra` with backstop's defaults.
pub fn measure() -> f64 {
    defaults().extra
}

/// A few lines on what was measured.
pub fn describe(ours: &Figures, former: &Figures, budget_only: &Figures) -> String {
    format!(
        "hedge: delay {:.1} ms when the burst arrived; a burst of {BURST} requests at once against a full server (every call queued 50 ms+ \
         then answered Overloaded, retry after 1 s), after {WARM_UP} healthy requests at 1,000/s\n\
         hedge: defaults: {} duplicates (burst_hedge_extra {:.3}), bucket held {:.1} tokens before the burst, \
         warm-up extra {:.2}%, {}/{BURST} requests answered\n\
         hedge: former bucket (500 tokens at the start, no late-share bound): {} duplicates ({:.3}), \
         {:.1} tokens before the burst, warm-up extra {:.2}%\n\
         hedge: overload answers alone (former bucket, no late-share bound, 200 requests refused \
         before the burst): {} duplicates ({:.3}): a queueing server answers late, so few refusals \
         have drained the bucket when the burst comes; the late-share bound is what stops it",
        ours.delay_ms,
        ours.duplicates,
        ours.extra,
        ours.tokens_before,
        ours.warm_up_extra * 100.0,
        ours.answered,
        former.duplicates,
        former.extra,
        former.tokens_before,
        former.warm_up_extra * 100.0,
        budget_only.duplicates,
        budget_only.extra,
    )
}
