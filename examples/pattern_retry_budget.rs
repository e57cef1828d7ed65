//! Retry budget over real HTTP: during an outage, per-request retries multiply the load on the
//! failing server; a client-wide budget keeps retries to about 1% of requests.
//!
//!     cargo run --release --example pattern_retry_budget
//!
//! Two servers on 127.0.0.1 (ports picked at run time): one healthy, one answering 500 to every
//! request. Each client sends 300 requests at 200/s to the healthy one, then 300 to the failing
//! one, and the servers count the attempts that reach them.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::retry::{RetryBudget, RetryKind};
use support::client::{ClientRequest, ClientStack, HttpClient, transport};
use support::load::{Tally, drive};
use support::server::{RunningServer, ServerStack, Workers, start};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

const REQUESTS: u64 = 300;
const RATE: f64 = 200.0;

/// The naive client: up to 3 retries per request on any 5xx, as many SDKs did by default.
fn naive(transport: HttpClient) -> HttpClient {
    BoxCloneSyncService::new(tower::service_fn(move |req: ClientRequest| {
        let mut inner = transport.clone();
        async move {
            let mut attempt = 1;
            loop {
                let res = inner.ready().await?.call(req.clone()).await?;
                if !res.status().is_server_error() || attempt == 4 {
                    return Ok::<_, BoxError>(res);
                }
                attempt += 1;
            }
        }
    }))
}

async fn server(failure_rate: f64) -> Result<RunningServer, BoxError> {
    let mut workers = Workers::new(8, Duration::from_millis(5));
    workers.failure_rate = failure_rate;
    start(workers, ServerStack::none(), support::prometheus()).await
}

/// Attempts per request at the healthy and the failing server.
async fn run(client: HttpClient) -> Result<(f64, f64, Tally), BoxError> {
    let (healthy, failing) = (server(0.0).await?, server(1.0).await?);
    let run = Duration::from_secs_f64(REQUESTS as f64 / RATE + 1.0);
    let bound = Duration::from_secs(10);
    let ok = drive(&client, &healthy.url("/work"), RATE, run, REQUESTS, bound).await;
    let outage = drive(&client, &failing.url("/work"), RATE, run, REQUESTS, bound).await;
    assert_eq!(
        ok.outcomes() + outage.outcomes(),
        2 * REQUESTS,
        "one outcome each"
    );
    let per_request =
        |s: &RunningServer| s.workers.stats.arrived.load(Relaxed) as f64 / REQUESTS as f64;
    Ok((per_request(&healthy), per_request(&failing), outage))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (naive_ok, naive_outage, _) = run(naive(transport())).await?;
    let budget = RetryBudget::builder("http_client").build()?;
    let stack = ClientStack {
        meter: None,
        overall: Some(Duration::from_secs(1)),
        budget: Some(budget.clone()),
        hedge: None,
        bucket: None,
        attempt: Some(Duration::from_millis(400)),
    };
    let (bs_ok, bs_outage, outage) = run(stack.build(transport())?).await?;
    let stats = budget.stats();

    println!(
        "{REQUESTS} requests to a healthy server, then {REQUESTS} to one that answers 500 to all:\n"
    );
    println!(
        "{:<34} {:>8} {:>8}",
        "attempts per request", "healthy", "outage"
    );
    println!(
        "{:<34} {naive_ok:>8.2} {naive_outage:>8.2}",
        "naive client (3 retries on 5xx)"
    );
    println!(
        "{:<34} {bs_ok:>8.2} {bs_outage:>8.2}",
        "backstop retry with budget"
    );
    println!(
        "\nThe budget earned {:.2} retries from {} successes (1 per 100), and its floor (1/s, \
         lending only against successes, at most {:.0} banked) lent what the time allowed; it \
         allowed {} retries and denied {}. The callers still saw {} errors (500s) either way:",
        stats.deposits as f64 * budget.ratio(),
        stats.deposits,
        budget
            .cost(RetryKind::AfterTimeout)
            .max(budget.min_per_second()),
        stats.granted - stats.refunded,
        stats.denied,
        outage.status_count(500),
    );
    println!(
        "retrying cannot fix an outage, it can only add {:.0}% to the failing server's load instead of {:.0}%.",
        (bs_outage - 1.0) * 100.0,
        (naive_outage - 1.0) * 100.0
    );
    println!(
        "During the outage the budgeted client sent {:.2}x the naive client's attempts \
         (budget_outage_attempts / naive_outage_attempts below).",
        bs_outage / naive_outage
    );
    println!(
        "summary: naive_outage_attempts={naive_outage:.2} budget_outage_attempts={bs_outage:.2} outage_attempts_ratio={:.2} retries_granted={} retries_denied={}",
        bs_outage / naive_outage,
        stats.granted - stats.refunded,
        stats.denied
    );
    Ok(())
}
