//! Retry amplification in a chain of four services, with three kinds of retrying client.
//!
//! Users call service 1, which calls 2, which calls 3, which calls 4 (the simulation harness,
//! `backstop::sim`, on tokio's paused clock). Each service calls the next through its own
//! retrying client, and service 4 fails. The same load, with the same seed, runs with:
//!
//! - **naive**: 3 retries per call, exponential backoff (10, 20, 40 ms), no budget: up to
//!   4 × 4 × 4 = 64 requests at service 4 per user request;
//! - **backstop**: `RetryLayer` (at most one retry) with its own `RetryBudget` per service,
//!   at the defaults (ratio 0.01, floor 1 retry/s lending only against successes, cap 10, no
//!   initial tokens), and every retryable failure passed up marked "decided below", retried or
//!   not, so upper services do not retry what a lower one saw;
//! - **tower_tps_budget**: `tower::retry` with 3 retries (same backoff as naive), gated by
//!   tower's default `TpsBudget` (10 s window, 10 retries/s floor, ratio 0.2), one per service,
//!   depositing on success and withdrawing before each retry, as tower's docs show;
//! - **backstop_a6**: backstop's `RetryLayer` with gRPC's A6 retry throttling as its budget
//!   (`RetryThrottling`: 10 tokens, full at the start, a failure costs 1, a success earns 0.1,
//!   retries only above half), in both rows.
//!
//! Row 1 has service 4 failing every call. Row 2 has it failing 60% of calls at random; there
//! both budgets are configured with ratio 0.6 and no floor (tower: `TpsBudget::new(10 s, 0,
//! 0.6)`), so the ratio alone decides, and the table shows the retries the budget in front of
//! service 4 granted per success it saw, against the 0.6 configured. tower truncates its
//! withdraw amount (`(1 / 0.6) as isize` = 1 token per retry against 1 per success), so it
//! grants one retry per success; backstop keeps tokens in millionths and grants 0.6.
//!
//! A second table has quiet callers: 30 s healthy, then 60 s with service 4 down, at 10 and
//! 100 requests/s. It separates what each of backstop's rules does, against the rules before
//! issue 16 (**backstop_before**: a declined retry went up unmarked, and the floor was a fixed
//! 1 retry/s per budget), **decided_fixed_floor** (the "decided below" mark, the old floor) and
//! **backstop** (both), with tower's default `TpsBudget` alongside: requests at service 4 per
//! request during the outage, and the most calls one request made there.
//!
//! Ends with `summary: backstop=X naive=X tower_tps_budget=X backstop_10rps=X before_10rps=X`:
//! requests at service 4 per request the users offered, in the 100%-failure row, then during
//! the quiet callers' outage at 10 requests/s.
//!
//! Run it with `cargo run --release --example retry_amplification`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::retry::{MarkRetried, RetryBudget, RetryLayer, RetryThrottling};
use backstop::sim::{
    Arrivals, CallPolicy, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario, ServiceTime,
    SimReport, SimRequest, SimResponse, SimServer, SimService,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tower::ServiceExt;
use tower::retry::budget::{Budget as _, TpsBudget};

const SEED: u64 = 4;
const OFFERED_RPS: f64 = 100.0;
const RUN: Duration = Duration::from_secs(30);
const WORKERS: usize = 2_000;
const WORK: Duration = Duration::from_millis(1);
const PATIENCE: Duration = Duration::from_secs(3);
const NAIVE_RETRIES: u32 = 3;
const NAIVE_BACKOFF: Duration = Duration::from_millis(10);
/// From here on, every budget is in its steady state: backstop's start empty, and tower's 10 s
/// window has turned over once.
const STEADY_FROM: usize = 10;
/// The quiet callers' healthy start and outage.
const QUIET_HEALTHY: Duration = Duration::from_secs(30);
const QUIET_OUTAGE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    Naive,
    Backstop,
    /// The rules before issue 16: only retried failures marked, a fixed floor.
    BackstopBefore,
    /// Every retryable failure marked "decided below", with the old fixed floor.
    DecidedFixedFloor,
    TowerTps,
    /// backstop's `RetryLayer` with gRPC's A6 retry throttling (`RetryThrottling`, 10 tokens,
    /// ratio 0.1) as its budget.
    A6,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Naive => "naive",
            Client::Backstop => "backstop",
            Client::BackstopBefore => "backstop_before",
            Client::DecidedFixedFloor => "decided_fixed_floor",
            Client::TowerTps => "tower_tps_budget",
            Client::A6 => "backstop_a6",
        }
    }
}

/// The load and the outage of one run.
#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    /// Service 4 answers normally this long, then fails its share of calls.
    healthy: Duration,
    /// How long the load lasts after `healthy`.
    outage: Duration,
}

/// The budgets of a run, read after it.
#[derive(Default)]
struct Probes {
    /// backstop: the budget of each service's client (services 1, 2, 3).
    backstop: Vec<RetryBudget>,
    /// tower: deposits and granted withdrawals of each service's client.
    tower: Vec<Arc<TowerCounts>>,
    /// Service 4's answers that were successes.
    bottom_successes: Arc<AtomicU64>,
    /// Calls reaching service 4, per second of the run.
    bottom_per_second: Arc<Mutex<Vec<u64>>>,
    /// Calls reaching service 4 during the outage, per logical request.
    bottom_per_request: Arc<Mutex<HashMap<u64, u64>>>,
}

#[derive(Default)]
struct TowerCounts {
    deposits: AtomicU64,
    granted: AtomicU64,
}

/// tower's retry policy as its docs write it, with a retry limit, backoff, and counters.
#[derive(Clone)]
struct TowerPolicy {
    budget: Arc<TpsBudget>,
    counts: Arc<TowerCounts>,
    retries_left: u32,
    next_backoff: Duration,
}

impl tower::retry::Policy<SimRequest, SimResponse, BoxError> for TowerPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut SimRequest,
        result: &mut Result<SimResponse, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                self.counts.deposits.fetch_add(1, Relaxed);
                None
            }
            Err(_) if self.retries_left > 0 && self.budget.withdraw() => {
                self.counts.granted.fetch_add(1, Relaxed);
                self.retries_left -= 1;
                let backoff = self.next_backoff;
                self.next_backoff *= 2;
                Some(tokio::time::sleep(backoff))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &SimRequest) -> Option<SimRequest> {
        Some(req.clone())
    }
}

/// Service 4: does its work, then, after `healthy`, fails a `fail` share of calls, at random.
/// Counts its calls per second, its calls per request during the outage, and its successes.
fn failing(server: SimServer, fail: f64, healthy: Duration, probes: &Probes) -> SimService {
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(SEED)));
    let successes = probes.bottom_successes.clone();
    let per_second = probes.bottom_per_second.clone();
    let per_request = probes.bottom_per_request.clone();
    // The stack is built when the run starts.
    let start = tokio::time::Instant::now();
    SimService::new(tower::service_fn(move |req: SimRequest| {
        let second = start.elapsed().as_secs() as usize;
        {
            let mut counts = per_second.lock().unwrap();
            if counts.len() <= second {
                counts.resize(second + 1, 0);
            }
            counts[second] += 1;
        }
        let outage = start.elapsed() >= healthy;
        if outage {
            *per_request.lock().unwrap().entry(req.logical).or_default() += 1;
        }
        let fails = outage && rng.lock().unwrap().random_bool(fail);
        let (server, successes) = (server.clone(), successes.clone());
        async move {
            let res = server.oneshot(req).await?;
            if fails {
                Err(BoxError::from("service 4 failed"))
            } else {
                successes.fetch_add(1, Relaxed);
                Ok(res)
            }
        }
    }))
}

/// The client a service uses to call the next one.
fn caller(client: Client, n: usize, ratio_row: bool, probes: &mut Probes) -> (CallPolicy, Hop) {
    let hop = Hop::new(format!("service{n}"), WORKERS, ServiceTime::Fixed(WORK));
    match client {
        Client::Naive => {
            let policy = CallPolicy {
                attempt_timeout: None,
                retry: RetryPolicy::Naive {
                    retries: NAIVE_RETRIES,
                    backoff: NAIVE_BACKOFF,
                    jitter: 0.0,
                },
            };
            (policy, hop)
        }
        Client::Backstop | Client::BackstopBefore | Client::DecidedFixedFloor => {
            let mut budget = RetryBudget::builder(format!("service{}", n - 1))
                .floor_needs_successes(client == Client::Backstop);
            if ratio_row {
                budget = budget.ratio(0.6).min_per_second(0.0);
            }
            let budget = budget.build().expect("valid budget");
            probes.backstop.push(budget.clone());
            let mark = if client == Client::BackstopBefore {
                MarkRetried::AfterRetry
            } else {
                MarkRetried::Always
            };
            let layer = RetryLayer::builder(budget)
                // Every simulated call is a read: safe to send twice.
                .retry_non_idempotent()
                .mark_retried(mark)
                .seed(SEED)
                .build()
                .expect("valid retry layer");
            let policy = CallPolicy {
                attempt_timeout: None,
                retry: RetryPolicy::Stack,
            };
            let hop =
                hop.caller_stack(move |next| SimService::new(tower::Layer::layer(&layer, next)));
            (policy, hop)
        }
        Client::A6 => {
            // A6's example values in both rows: its ratio is not a share of successes.
            let budget = RetryThrottling::builder(format!("service{}_a6", n - 1))
                .build()
                .expect("valid throttling");
            let layer = RetryLayer::builder(budget)
                .retry_non_idempotent()
                .seed(SEED)
                .build()
                .expect("valid retry layer");
            let policy = CallPolicy {
                attempt_timeout: None,
                retry: RetryPolicy::Stack,
            };
            let hop =
                hop.caller_stack(move |next| SimService::new(tower::Layer::layer(&layer, next)));
            (policy, hop)
        }
        Client::TowerTps => {
            let budget = if ratio_row {
                TpsBudget::new(Duration::from_secs(10), 0, 0.6)
            } else {
                TpsBudget::default()
            };
            let counts = Arc::new(TowerCounts::default());
            probes.tower.push(counts.clone());
            let policy = TowerPolicy {
                budget: Arc::new(budget),
                counts,
                retries_left: NAIVE_RETRIES,
                next_backoff: NAIVE_BACKOFF,
            };
            let call = CallPolicy {
                attempt_timeout: None,
                retry: RetryPolicy::Stack,
            };
            let hop = hop.caller_stack(move |next| {
                SimService::new(tower::retry::Retry::new(policy.clone(), next))
            });
            (call, hop)
        }
    }
}

fn scenario(client: Client, fail: f64, load: Load) -> Result<(Scenario, Probes), BoxError> {
    let ratio_row = fail < 1.0;
    let mut probes = Probes::default();
    let users = ClientBehavior {
        clients: 100,
        patience: PATIENCE,
        call: CallPolicy::default(),
        reload: None,
        ..ClientBehavior::default()
    };
    let run = load.healthy + load.outage;
    let mut builder = Scenario::builder(format!("{} fail={:.0}%", client.name(), fail * 100.0))
        .seed(SEED)
        .profile(LoadProfile::new().step(run, load.rps))
        .arrivals(Arrivals::Poisson)
        .run_for(run + PATIENCE * 2)
        .clients(users)
        .hop(Hop::new("service1", WORKERS, ServiceTime::Fixed(WORK)));
    for n in 2..=4 {
        let (policy, hop) = caller(client, n, ratio_row, &mut probes);
        let mut hop = hop.caller_policy(policy);
        if n == 4 {
            let probes = Probes {
                backstop: Vec::new(),
                tower: Vec::new(),
                bottom_successes: probes.bottom_successes.clone(),
                bottom_per_second: probes.bottom_per_second.clone(),
                bottom_per_request: probes.bottom_per_request.clone(),
            };
            let healthy = load.healthy;
            hop = hop.stack(move |server| failing(server, fail, healthy, &probes));
        }
        builder = builder.hop(hop);
    }
    Ok((builder.build()?, probes))
}

struct Row {
    client: Client,
    fail: f64,
    offered: u64,
    bottom_sent: u64,
    /// Requests at service 4 per offered request from `STEADY_FROM` to the end of the load.
    steady: f64,
    retries_at_bottom: u64,
    bottom_successes: u64,
    /// Retries the budget in front of service 4 granted (net of refunds), and the successes it
    /// was paid with.
    budget_granted: Option<(u64, u64)>,
    configured_ratio: Option<f64>,
}

impl Row {
    fn amplification(&self) -> f64 {
        self.bottom_sent as f64 / self.offered.max(1) as f64
    }
}

const MAIN: Load = Load {
    rps: OFFERED_RPS,
    healthy: Duration::ZERO,
    outage: RUN,
};

fn run(client: Client, fail: f64) -> Result<(Row, SimReport), BoxError> {
    let (scenario, probes) = scenario(client, fail, MAIN)?;
    let report = scenario.run();
    let bottom = &report.hops[3];
    let above = &report.hops[2];
    let budget_granted = match client {
        Client::Naive | Client::A6 => None,
        Client::Backstop | Client::BackstopBefore | Client::DecidedFixedFloor => {
            probes.backstop.last().map(|b| {
                let s = b.stats();
                (s.granted - s.refunded, s.deposits)
            })
        }
        Client::TowerTps => probes
            .tower
            .last()
            .map(|c| (c.granted.load(Relaxed), c.deposits.load(Relaxed))),
    };
    let configured_ratio = match client {
        Client::Naive => None,
        Client::A6 => Some(0.1),
        _ if fail < 1.0 => Some(0.6),
        Client::Backstop | Client::BackstopBefore | Client::DecidedFixedFloor => Some(0.01),
        Client::TowerTps => Some(0.2),
    };
    let steady_offered: u64 = report.series[STEADY_FROM..RUN.as_secs() as usize]
        .iter()
        .map(|b| b.offered)
        .sum();
    let steady_bottom: u64 = probes.bottom_per_second.lock().unwrap()
        [STEADY_FROM..RUN.as_secs() as usize]
        .iter()
        .sum();
    let row = Row {
        client,
        fail,
        offered: report.summary.offered,
        bottom_sent: bottom.sent,
        steady: steady_bottom as f64 / steady_offered.max(1) as f64,
        retries_at_bottom: bottom.sent.saturating_sub(above.arrivals),
        bottom_successes: probes.bottom_successes.load(Relaxed),
        budget_granted,
        configured_ratio,
    };
    Ok((row, report))
}

/// What service 4 saw during a quiet caller's outage.
struct Quiet {
    client: Client,
    rps: f64,
    requests: u64,
    calls: u64,
    max_per_request: u64,
}

impl Quiet {
    fn amplification(&self) -> f64 {
        self.calls as f64 / self.requests.max(1) as f64
    }
}

fn quiet(client: Client, rps: f64) -> Result<Quiet, BoxError> {
    let load = Load {
        rps,
        healthy: QUIET_HEALTHY,
        outage: QUIET_OUTAGE,
    };
    let (scenario, probes) = scenario(client, 1.0, load)?;
    scenario.run();
    let counts = probes.bottom_per_request.lock().unwrap();
    Ok(Quiet {
        client,
        rps,
        requests: counts.len() as u64,
        calls: counts.values().sum(),
        max_per_request: counts.values().copied().max().unwrap_or(0),
    })
}

fn main() -> Result<(), BoxError> {
    println!(
        "Four services in a chain; users offer {OFFERED_RPS} requests/s for {}s (Poisson, seed \
         {SEED}); each service calls the next through its own retrying client.\n",
        RUN.as_secs()
    );
    let mut rows = Vec::new();
    for fail in [1.0, 0.6] {
        for client in [
            Client::Backstop,
            Client::Naive,
            Client::TowerTps,
            Client::A6,
        ] {
            let (row, report) = run(client, fail)?;
            if client == Client::Naive && fail == 1.0 {
                println!("{}", report.hop_table());
            }
            rows.push(row);
        }
    }

    println!(
        "{:<17} {:>6} {:>8} {:>10} {:>12} {:>13} {:>10} {:>13} {:>10}",
        "client",
        "fail",
        "offered",
        "at svc 4",
        "svc4/offered",
        "after 10 s",
        "retries@4",
        "granted/succ",
        "configured"
    );
    for r in &rows {
        let granted = match r.budget_granted {
            Some((g, s)) if s > 0 => format!("{:.3}", g as f64 / s as f64),
            Some((g, _)) => format!("{g}/0"),
            None if r.bottom_successes == 0 => "n/a".to_string(),
            None => format!(
                "{:.3}*",
                r.retries_at_bottom as f64 / r.bottom_successes as f64
            ),
        };
        let configured = r
            .configured_ratio
            .map_or_else(|| "none".to_string(), |c| format!("{c}"));
        println!(
            "{:<17} {:>5.0}% {:>8} {:>10} {:>11.2}x {:>12.2}x {:>10} {:>13} {:>10}",
            r.client.name(),
            r.fail * 100.0,
            r.offered,
            r.bottom_sent,
            r.amplification(),
            r.steady,
            r.retries_at_bottom,
            granted,
            configured
        );
    }
    println!(
        "\nsvc4/offered: requests service 4 received per request the users offered (after 10 s: \
         the same from second 10 to the end of the load, once every budget is in its steady \
         state). retries@4: \
         requests to service 4 beyond the first call of each request service 3 served. \
         granted/succ: retries the budget in front of service 4 granted per success it was \
         paid with (* naive and backstop_a6: retries at service 4 per success there). \
         backstop_a6: backstop's RetryLayer with gRPC's A6 throttling (10 tokens, ratio 0.1) \
         as its budget."
    );

    println!(
        "\nQuiet callers: {}s healthy, then service 4 fails every call for {}s.\n",
        QUIET_HEALTHY.as_secs(),
        QUIET_OUTAGE.as_secs()
    );
    println!(
        "{:<20} {:>6} {:>9} {:>9} {:>12} {:>12}",
        "client", "rps", "requests", "at svc 4", "svc4/request", "max/request"
    );
    let mut quiet_rows = Vec::new();
    for rps in [10.0, 100.0] {
        for client in [
            Client::BackstopBefore,
            Client::DecidedFixedFloor,
            Client::Backstop,
            Client::TowerTps,
            Client::A6,
        ] {
            let q = quiet(client, rps)?;
            println!(
                "{:<20} {:>6} {:>9} {:>9} {:>11.3}x {:>12}",
                q.client.name(),
                q.rps,
                q.requests,
                q.calls,
                q.amplification(),
                q.max_per_request
            );
            quiet_rows.push(q);
        }
    }
    println!(
        "\nsvc4/request: calls at service 4 per request during the outage; max/request: the most \
         calls one request made there. backstop_before: declined retries passed up unmarked, a \
         fixed floor of 1 retry/s per budget; decided_fixed_floor: every retryable failure \
         passed up marked, the fixed floor; backstop: marked, and the floor lends only against \
         successes."
    );

    let full = |c: Client| {
        rows.iter()
            .find(|r| r.client == c && r.fail == 1.0)
            .map_or(f64::NAN, Row::amplification)
    };
    let quiet10 = |c: Client| {
        quiet_rows
            .iter()
            .find(|q| q.client == c && q.rps == 10.0)
            .map_or(f64::NAN, Quiet::amplification)
    };
    println!(
        "summary: backstop={:.3} naive={:.3} tower_tps_budget={:.3} backstop_10rps={:.3} \
         before_10rps={:.3}",
        full(Client::Backstop),
        full(Client::Naive),
        full(Client::TowerTps),
        quiet10(Client::Backstop),
        quiet10(Client::BackstopBefore)
    );
    Ok(())
}
