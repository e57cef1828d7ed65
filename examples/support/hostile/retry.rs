//! Hostile clients, the retry part: a chain of four services, each calling the next through
//! its own `RetryLayer`, whose bottom fails. How often does one request reach the bottom, and
//! how much extra load does a quiet caller (10 requests/s) add during the outage?
//!
//! Users call service 1 through a retrying client; services 1, 2 and 3 each call the next
//! through theirs (four retry layers, four budgets); each service works 1 ms. Everything runs on
//! a current-thread tokio runtime with the clock paused, so a minute of outage takes a few
//! milliseconds and every run gives the same figures.

// The example that includes this part may use `measure` alone.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::retry::{MarkRetried, RetryBudget, RetryLayer, RetryRequest};
use backstop::timeout::{Deadline, HasDeadline};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

/// What the retry part measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryFigures {
    /// The most calls any one request made at the bottom of the chain while it failed, over
    /// three runs at 10 requests/s: every budget able to pay for every retry; the bottom
    /// layer's budget at the defaults under full ones (a refusal below, retries possible
    /// above); and every budget at the defaults.
    pub max_bottom_calls: u64,
    /// Calls at the bottom per request during a 60 s outage at 10 requests/s, after 30 s
    /// healthy (default budgets, so each holds what a live client's holds when it starts).
    pub amp_10rps: f64,
}

const LEVELS: usize = 4;
const WORK: Duration = Duration::from_millis(1);
const RATE: f64 = 10.0;
const HEALTHY: Duration = Duration::from_secs(30);
const OUTAGE: Duration = Duration::from_secs(60);

/// A request: an id, always safe to repeat (a read).
#[derive(Clone, Debug)]
struct Call {
    id: u64,
    deadline: Option<Deadline>,
}

impl HasDeadline for Call {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

impl RetryRequest for Call {
    fn is_idempotent(&self) -> bool {
        true
    }
}

type Svc = BoxCloneService<Call, (), BoxError>;
/// Calls at the bottom during the outage, per request id.
type Counts = Arc<Mutex<HashMap<u64, u64>>>;

/// How each level's client is configured.
#[derive(Clone, Copy, Debug)]
struct Config {
    /// Which levels' budgets start full (10 tokens) instead of empty: none, all, or all but
    /// the bottom layer's.
    full: Full,
    /// The floor lends only against successes (the default now).
    gated_floor: bool,
    mark: MarkRetried,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Full {
    None,
    All,
    AboveBottom,
}

/// backstop's defaults.
const DEFAULTS: Config = Config {
    full: Full::None,
    gated_floor: true,
    mark: MarkRetried::Always,
};

/// The chain: `LEVELS` retry layers, the bottom failing from `outage` on.
fn chain(config: Config, outage: Instant, counts: Counts) -> Svc {
    let bottom = tower::service_fn(move |call: Call| {
        let failing = Instant::now() >= outage;
        if failing {
            *counts.lock().unwrap().entry(call.id).or_default() += 1;
        }
        async move {
            tokio::time::sleep(WORK).await;
            if failing {
                Err::<(), BoxError>("service 4 is down".into())
            } else {
                Ok(())
            }
        }
    });
    let mut next: Svc = BoxCloneService::new(bottom);
    for level in 0..LEVELS {
        let budget = RetryBudget::builder(format!("hostile-retry-{level}"))
            .initial_tokens(match config.full {
                Full::All => 10.0,
                Full::AboveBottom if level > 0 => 10.0,
                _ => 0.0,
            })
            .floor_needs_successes(config.gated_floor)
            .build()
            .expect("valid budget");
        let layer = RetryLayer::builder(budget)
            .mark_retried(config.mark)
            .seed(level as u64)
            .build()
            .expect("valid retry layer");
        let client: Svc = BoxCloneService::new(layer.layer(next));
        if level + 1 == LEVELS {
            // The users' own client: no service above it.
            next = client;
        } else {
            // The service that owns this client: does its work, then calls down.
            next = BoxCloneService::new(tower::service_fn(move |call: Call| {
                let client = client.clone();
                async move {
                    tokio::time::sleep(WORK).await;
                    client.oneshot(call).await
                }
            }));
        }
    }
    next
}

/// Bottom calls and requests during the outage, and the most calls one request made there.
#[derive(Debug, Clone, Copy)]
struct Run {
    requests: u64,
    calls: u64,
    max_per_request: u64,
    /// Calls beyond the first, of requests that arrived 10 s or more into the outage: what
    /// the chain keeps adding once the budgets' banked tokens are spent.
    extra_after_10s: u64,
}

/// `RATE` requests/s for `healthy + outage`, the bottom failing for the last `outage`.
fn run(config: Config, healthy: Duration, outage: Duration) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let start = Instant::now();
        let counts = Counts::default();
        let svc = chain(config, start + healthy, counts.clone());
        let total = ((healthy + outage).as_secs_f64() * RATE) as u64;
        let gap = Duration::from_secs_f64(1.0 / RATE);
        let mut calls = tokio::task::JoinSet::new();
        for id in 0..total {
            tokio::time::sleep_until(start + gap * id as u32).await;
            let call = Call { id, deadline: None };
            calls.spawn(svc.clone().oneshot(call));
        }
        // Every request ends with one outcome; failures are the point here.
        while calls.join_next().await.is_some() {}
        let counts = counts.lock().unwrap();
        let late = ((healthy.as_secs_f64() + 10.0) * RATE) as u64;
        Run {
            requests: counts.len() as u64,
            calls: counts.values().sum(),
            max_per_request: counts.values().copied().max().unwrap_or(0),
            extra_after_10s: counts
                .iter()
                .filter(|(id, _)| **id >= late)
                .map(|(_, calls)| calls - 1)
                .sum(),
        }
    })
}

impl Run {
    fn amplification(&self) -> f64 {
        self.calls as f64 / self.requests.max(1) as f64
    }
}

fn measure_with(config: Config) -> RetryFigures {
    // The bottom failing from the start. With every budget able to pay, nothing but the marker
    // stands between a request and 2^4 calls at the bottom; with the bottom layer's budget at
    // the defaults under full ones, its refusals meet layers above that could retry.
    let all_full = run(
        Config {
            full: Full::All,
            ..config
        },
        Duration::ZERO,
        Duration::from_secs(20),
    );
    let refusing = run(
        Config {
            full: Full::AboveBottom,
            ..config
        },
        Duration::ZERO,
        Duration::from_secs(20),
    );
    let quiet = run(config, HEALTHY, OUTAGE);
    RetryFigures {
        max_bottom_calls: all_full
            .max_per_request
            .max(refusing.max_per_request)
            .max(quiet.max_per_request),
        amp_10rps: quiet.amplification(),
    }
}

/// Measures the chain with backstop's defaults.
pub fn measure() -> RetryFigures {
    measure_with(DEFAULTS)
}

/// The most calls one request made at the bottom with no mark at all and every budget full.
fn unmarked_max() -> u64 {
    let config = Config {
        full: Full::All,
        gated_floor: true,
        mark: MarkRetried::Never,
    };
    run(config, Duration::ZERO, Duration::from_secs(2)).max_per_request
}

/// The same chain under the rules before issue 16: declined retries went up unmarked, and the
/// floor was a fixed 1 retry/s per budget.
pub fn measure_before() -> RetryFigures {
    measure_with(Config {
        full: Full::None,
        gated_floor: false,
        mark: MarkRetried::AfterRetry,
    })
}

/// A few lines explaining the figures, with the old rules measured in the same run as the
/// baseline.
pub fn describe(figures: &RetryFigures) -> String {
    let before = measure_before();
    let late = run(DEFAULTS, HEALTHY, OUTAGE).extra_after_10s;
    format!(
        "retry: 4 services in a chain, each calling the next through its own RetryLayer; the \
         bottom fails.\n\
         retry: max calls one request made at the bottom: {} (before: {}; no mark at all: {}); \
         a failure goes up marked \"decided below\" whether the lowest layer retried it or \
         declined to.\n\
         retry: at {RATE} requests/s, {}s outage after {}s healthy: {:.4}x calls at the bottom \
         per request (before: {:.4}x); extra calls for requests 10 s or more into the outage: \
         {late} (the rest is what the budgets banked while healthy); the floor now lends only \
         against successes.",
        figures.max_bottom_calls,
        before.max_bottom_calls,
        unmarked_max(),
        OUTAGE.as_secs(),
        HEALTHY.as_secs(),
        figures.amp_10rps,
        before.amp_10rps,
    )
}
