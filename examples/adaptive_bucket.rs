//! The adaptive token bucket against a server that throttles above 100 requests/s.
//!
//! A client offers 300 requests/s (one every 3⅓ ms, for 60 s of simulated time) through a
//! [`TokenBucketLayer`] whose bucket has the AWS adaptive rate: unlimited until the first
//! throttle, then cut to 0.7 × the measured send rate once per congestion event (a throttle of a
//! request sent before the last cut does not cut again) and grown back along the
//! CUBIC curve. The server admits 100 requests/s (its own token bucket: 100/s, burst 10, written
//! here independently of backstop's) and answers the rest with `Overloaded { Throttled }` after
//! 20 ms, like a 429.
//!
//! The send rate is what reaches the server (admitted or throttled), counted per simulated
//! second. For comparison the same load runs once with no client bucket.
//!
//! A second scenario gives the server a realistic round trip: 200 ms per answer, so about 60
//! requests are in flight when it starts refusing. All the refusals of those in-flight requests
//! are one congestion event: the controller cuts once for them (a throttle of a request sent
//! before the last cut does not cut again), as TCP cuts once per round trip, instead of 0.7ⁿ down
//! to its floor. The example prints the send rate it reaches, against the server's 100/s.
//!
//! Last line: `summary: converged_rps=R converge_s=S max_deviation=F`: R is the mean send rate
//! over the last 30 s, S the end of the first 1-second window within 10% of 100/s, F the largest
//! relative distance of a 1-second send rate from 100/s after S.
//!
//! Run it with `cargo run --release --example adaptive_bucket`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
use backstop::{BoxError, OverloadReason, Overloaded};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const SERVER_RATE: f64 = 100.0;
const SERVER_BURST: f64 = 10.0;
const OFFERED: f64 = 300.0;
const LATENCY: Duration = Duration::from_millis(20);
/// The round trip of the second scenario.
const LONG_LATENCY: Duration = Duration::from_millis(200);

/// The server's admission: a plain f64 token bucket, refilled on each arrival.
struct ServerLimit {
    tokens: f64,
    last: Instant,
}

/// What one run saw, per simulated second.
struct Run {
    /// Requests that reached the server in each second.
    sent: Vec<u64>,
    /// Requests the server throttled in each second.
    throttled: Vec<u64>,
    /// The client bucket's rate at the end of each second (None: unlimited or no bucket).
    rate: Vec<Option<f64>>,
}

async fn run(seconds: usize, adaptive: bool, latency: Duration) -> Result<Run, BoxError> {
    let start = Instant::now();
    let limit = Arc::new(Mutex::new(ServerLimit {
        tokens: SERVER_BURST,
        last: start,
    }));
    let sent = Arc::new(Mutex::new(vec![0u64; seconds]));
    let throttled = Arc::new(Mutex::new(vec![0u64; seconds]));
    let server = {
        let (sent, throttled) = (sent.clone(), throttled.clone());
        tower::service_fn(move |_: ()| {
            let now = Instant::now();
            let second = (now - start).as_secs() as usize;
            let admitted = {
                let mut l = limit.lock().unwrap();
                let dt = (now - l.last).as_secs_f64();
                l.tokens = (l.tokens + dt * SERVER_RATE).min(SERVER_BURST);
                l.last = now;
                if l.tokens >= 1.0 {
                    l.tokens -= 1.0;
                    true
                } else {
                    false
                }
            };
            if second < seconds {
                sent.lock().unwrap()[second] += 1;
                if !admitted {
                    throttled.lock().unwrap()[second] += 1;
                }
            }
            async move {
                tokio::time::sleep(latency).await;
                if admitted {
                    Ok(())
                } else {
                    Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
                }
            }
        })
    };
    let bucket = TokenBucket::builder("client")
        .adaptive(AdaptiveRate::aws().build()?)
        .build()?;
    let client = ServiceBuilder::new()
        .option_layer(adaptive.then(|| TokenBucketLayer::new(bucket.clone())))
        .service(server)
        .map_err(Into::<BoxError>::into)
        .boxed_clone();

    let mut rate = Vec::with_capacity(seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / OFFERED));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = start + Duration::from_secs(seconds as u64);
    let mut next_second = start + Duration::from_secs(1);
    loop {
        let now = tick.tick().await;
        while now >= next_second && rate.len() < seconds {
            rate.push(if adaptive { bucket.rate() } else { None });
            next_second += Duration::from_secs(1);
        }
        if now >= end {
            break;
        }
        let mut svc = client.clone();
        tokio::spawn(async move {
            // Refusals (the client's own RateLimited, the server's Throttled) are expected.
            let _ = svc.ready().await?.call(()).await;
            Ok::<_, BoxError>(())
        });
    }
    tokio::time::sleep(latency * 2).await;
    let sent = sent.lock().unwrap().clone();
    let throttled = throttled.lock().unwrap().clone();
    Ok(Run {
        sent,
        throttled,
        rate,
    })
}

/// The figures the issue asks for, from the 1-second send rates.
struct Figures {
    converge_s: Option<usize>,
    max_deviation: f64,
    last30_mean: f64,
    min_after: u64,
    max_after: u64,
}

fn figures(sent: &[u64]) -> Figures {
    let target = SERVER_RATE;
    let converge = sent
        .iter()
        .position(|&n| (n as f64 - target).abs() <= 0.1 * target);
    let after = &sent[converge.map_or(sent.len(), |i| i + 1)..];
    let max_deviation = after
        .iter()
        .map(|&n| (n as f64 - target).abs() / target)
        .fold(0.0, f64::max);
    let last = &sent[sent.len().saturating_sub(30)..];
    Figures {
        converge_s: converge.map(|i| i + 1),
        max_deviation,
        last30_mean: last.iter().sum::<u64>() as f64 / last.len() as f64,
        min_after: after.iter().copied().min().unwrap_or(0),
        max_after: after.iter().copied().max().unwrap_or(0),
    }
}

/// One run on its own paused runtime.
fn simulate(seconds: usize, adaptive: bool, latency: Duration) -> Result<Run, BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?
        .block_on(run(seconds, adaptive, latency))
}

fn main() -> Result<(), BoxError> {
    let seconds = 60;
    let bare = simulate(seconds, false, LATENCY)?;
    let adaptive = simulate(seconds, true, LATENCY)?;
    let long = simulate(seconds, true, LONG_LATENCY)?;

    println!(
        "server admits {SERVER_RATE}/s (burst {SERVER_BURST}), client offers {OFFERED}/s, {seconds} s simulated"
    );
    println!(
        "  second | no bucket: sent throttled | adaptive: sent throttled      rate \
         | rtt {} ms: sent throttled      rate",
        LONG_LATENCY.as_millis()
    );
    let show = |r: Option<f64>| r.map_or("unlimited".to_owned(), |r| format!("{r:.1}"));
    for s in 0..seconds {
        println!(
            "  {:>6} | {:>15} {:>9} | {:>14} {:>9} {:>9} | {:>14} {:>9} {:>9}",
            s + 1,
            bare.sent[s],
            bare.throttled[s],
            adaptive.sent[s],
            adaptive.throttled[s],
            show(adaptive.rate[s]),
            long.sent[s],
            long.throttled[s],
            show(long.rate[s])
        );
    }
    let total = |v: &[u64]| v.iter().sum::<u64>();
    let (bare_t, ad_t) = (total(&bare.throttled), total(&adaptive.throttled));
    println!(
        "throttled answers: no bucket {bare_t} of {} sent; adaptive {ad_t} of {} sent ({:.1}x fewer)",
        total(&bare.sent),
        total(&adaptive.sent),
        bare_t as f64 / ad_t.max(1) as f64
    );
    let long_f = figures(&long.sent);
    let first10 = long.sent[..10].iter().sum::<u64>() as f64 / 10.0;
    let lowest_rate = long
        .rate
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    println!(
        "round trip {} ms (about {:.0} requests in flight): send rate {:.1}/s in the first 10 s, \
         {:.1}/s over the last 30 s ({:.2} of the server's {SERVER_RATE}/s); lowest bucket rate \
         {lowest_rate:.1}/s; throttled answers {}",
        LONG_LATENCY.as_millis(),
        OFFERED * LONG_LATENCY.as_secs_f64(),
        first10,
        long_f.last30_mean,
        long_f.last30_mean / SERVER_RATE,
        total(&long.throttled)
    );
    let f = figures(&adaptive.sent);
    println!(
        "after convergence: 1-second send rate between {} and {}/s; last 30 s mean {:.1}/s",
        f.min_after, f.max_after, f.last30_mean
    );
    let converge = f
        .converge_s
        .map_or_else(|| "never".to_owned(), |s| s.to_string());
    println!(
        "summary: converged_rps={:.1} converge_s={converge} max_deviation={:.3}",
        f.last30_mean, f.max_deviation
    );
    Ok(())
}
