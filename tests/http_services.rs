//! The example server and client over real HTTP on loopback, driven at 3× the server's capacity.
//!
//! Invariants only, no speed figures beyond the one the issue asks for (the server keeps at least
//! 80% of its capacity: its workers sleep for their service time, so that holds on a slow machine
//! too; it is read as the median of 1 s windows). Everything is bounded: about 3 s of load, 10 s
//! per request, 40 s for the whole test.

#[path = "../examples/support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use support::client::{ClientStack, fetch_text, transport};
use support::load::drive;
use support::server::{ServerStack, Workers, start};
use tokio::time::Instant;

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(40); // 100 requests/s
const RUN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_capacity_every_request_gets_one_outcome() -> Result<(), BoxError> {
    tokio::time::timeout(Duration::from_secs(40), crush()).await?
}

async fn crush() -> Result<(), BoxError> {
    let prometheus = support::prometheus(); // before any layer is built
    let server = start(
        Workers::new(WORKERS, SERVICE),
        ServerStack::recommended(WORKERS)?,
        prometheus,
    )
    .await?;
    let capacity = server.workers.capacity();
    let budget_born = Instant::now();
    let stack = ClientStack::recommended()?;
    let (budget, client_meter) = (stack.budget.clone().unwrap(), stack.meter.clone().unwrap());
    let client = stack.build(transport())?;

    let client_before = client_meter.snapshot();
    let rate = 3.0 * capacity;
    let max = (rate * RUN.as_secs_f64()) as u64;
    // Samples the handler's completions while the load runs, for the served rate second by second.
    let sampler = {
        let stats = server.workers.stats.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let end = Instant::now() + RUN;
            while Instant::now() < end {
                samples.push((Instant::now(), stats.completed.load(Relaxed)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    let tally = drive(
        &client,
        &server.url("/work"),
        rate,
        RUN,
        max,
        Duration::from_secs(10),
    )
    .await;
    let budget_age = budget_born.elapsed();

    // Every request got exactly one outcome, and none hung.
    assert_eq!(tally.outcomes(), tally.sent);
    assert_eq!(tally.hung, 0, "{tally:?}");
    assert!(
        tally.sent >= max / 2,
        "the generator sent {} of {max}",
        tally.sent
    );
    // The client's meter saw each request arrive once and finish once, and holds none now.
    let seen = client_meter.snapshot().since(&client_before);
    assert_eq!((seen.arrivals, seen.completions), (tally.sent, tally.sent));
    assert_eq!(client_meter.in_flight(), 0);
    // Refusals carry Retry-After; nothing but 2xx, 429/503 and a deadline's 504 came back.
    assert!(
        tally.refused_503 + tally.refused_429 > 0,
        "3x capacity must be refused in part"
    );
    assert_eq!(tally.refused_without_retry_after, 0, "{tally:?}");
    for (status, n) in &tally.statuses {
        assert_eq!(*status, 504, "{n} answers with status {status}");
    }

    // The server: nothing left waiting or running, every offered request accounted for.
    tokio::time::sleep(Duration::from_millis(200)).await; // the last bodies' permits come back
    let q = server.queue.as_ref().unwrap().stats();
    assert_eq!((q.waiting, q.in_flight), (0, 0), "{q:?}");
    assert_eq!(q.offered(), q.admitted + q.shed + q.rejected + q.cancelled);
    assert_eq!(server.meter.in_flight(), 0);
    // Accepted throughput held up under 3x overload: the served rate over each 1 s window of the
    // run (after the first 0.5 s, when the line first fills), read as the median window, so one
    // stall of a loaded test machine does not decide the test.
    let samples = sampler.await?;
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| t.duration_since(samples[0].0) >= Duration::from_millis(500))
        .filter_map(|&(t0, n0)| {
            let &(t1, n1) = samples
                .iter()
                .find(|(t, _)| t.duration_since(t0) >= Duration::from_secs(1))?;
            Some((n1 - n0) as f64 / (t1 - t0).as_secs_f64())
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    assert!(!rates.is_empty(), "no full second sampled");
    let served_rate = rates[rates.len() / 2];
    eprintln!(
        "sent {} at {:.0}/s: served {served_rate:.0}/s (median 1 s window; overall {:.0}/s) of {capacity:.0}/s; 2xx {}, 429 {}, 503 {}, other {:?}, client timeouts {}, client errors {}",
        tally.sent,
        tally.offered(),
        server.workers.stats.completed.load(Relaxed) as f64 / tally.sending.as_secs_f64(),
        tally.ok,
        tally.refused_429,
        tally.refused_503,
        tally.statuses,
        tally.client_timeout,
        tally.client_error + tally.client_overload
    );
    assert!(
        served_rate >= 0.8 * capacity,
        "served {served_rate:.0}/s of a capacity of {capacity:.0}/s"
    );

    // The client retried at most what its budget allows: initial 0 + ratio x successes +
    // floor x elapsed seconds; and no request reached the server more than twice.
    let b = budget.stats();
    let retries = (b.granted - b.refunded) as f64;
    let allowance =
        budget.ratio() * b.deposits as f64 + budget.min_per_second() * budget_age.as_secs_f64();
    assert!(
        retries <= allowance + 1e-9,
        "{retries} retries, allowance {allowance:.2}"
    );
    let reached = server.workers.stats.arrived.load(Relaxed) as f64;
    assert!(
        reached <= tally.sent as f64 + retries,
        "{reached} reached the handler"
    );

    // The scrape has every backstop_ series the README lists, zeros included.
    let scrape = fetch_text(&server.url("/metrics")).await?;
    for (metric, labels) in support::EXPORTED_SERIES {
        assert!(
            support::series_value(&scrape, metric, labels).is_some(),
            "{metric}{labels:?} missing from the scrape:\n{scrape}"
        );
    }
    // ...and every name in the README's metrics table.
    let readme = include_str!("../README.md");
    let table = readme
        .split("## Metrics")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Metrics section");
    let listed: std::collections::BTreeSet<&str> = table
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("backstop_"))
        .collect();
    assert!(listed.len() >= 30, "{listed:?}");
    for name in listed {
        assert!(
            scrape.lines().any(|line| line.starts_with(name)),
            "{name}, listed in the README, is missing from the scrape"
        );
    }
    // A series that has seen nothing reads 0 rather than missing (no handler error happened).
    let errors = [("name", "http_server"), ("outcome", "error")];
    assert_eq!(
        support::series_value(&scrape, "backstop_requests_total", &errors),
        Some(0.0)
    );
    // The server counted the refusals the client saw (429/503), and the successes.
    let overloads = [("name", "http_server"), ("outcome", "overload")];
    let refused = support::series_value(&scrape, "backstop_requests_total", &overloads).unwrap();
    assert!(refused >= (tally.refused_503 + tally.refused_429) as f64);
    Ok(())
}
