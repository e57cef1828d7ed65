//! Whole-client throttling over real HTTP: a quota per client (`x-client-id`), and, when the
//! server sheds, all of a client's requests or none.
//!
//!     cargo run --release --example pattern_throttle
//!
//! Server on 127.0.0.1 (port picked at run time), 16 workers x 5 ms, behind a throttle with a
//! quota of 20 requests/s per client. Phase 1: one greedy client sends 100/s beside eight that
//! send 10/s each. Phase 2: the shed fraction is set to 0.5 (as the PID controller would) and
//! the eight send 10/s each.

#[path = "support/http/mod.rs"]
mod support;

use std::time::Duration;

use backstop::BoxError;
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
use support::client::{ClientStack, HttpClient, transport};
use support::load::{Outcome, one};
use support::server::{ServerStack, Workers, start, wrap};

const SECONDS: f64 = 2.0;

/// Client `id` sends at `rate` for two seconds; returns (served, refused with 429).
async fn client(http: HttpClient, url: String, id: u64, rate: f64) -> (u32, u32) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut calls = Vec::new();
    for _ in 0..(rate * SECONDS) as u32 {
        tick.tick().await;
        calls.push(tokio::spawn(one(
            http.clone(),
            url.clone(),
            id,
            Duration::from_secs(5),
        )));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await {
            Ok(Outcome::Ok(_)) => ok += 1,
            Ok(Outcome::Refused { status: 429, .. }) => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    (ok, refused)
}

async fn phase(http: &HttpClient, url: &str, rates: &[(u64, f64)]) -> Vec<(u64, u32, u32)> {
    let runs: Vec<_> = rates
        .iter()
        .map(|&(id, rate)| {
            (
                id,
                tokio::spawn(client(http.clone(), url.to_owned(), id, rate)),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (id, run) in runs {
        let (ok, refused) = run.await.expect("client task");
        out.push((id, ok, refused));
    }
    out
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prometheus = support::prometheus();
    let shed = ShedFraction::builder("http_server").seed(42).build()?;
    let quota = Quota::per_second(20.try_into()?);
    let throttle = ThrottleLayer::builder("http_server", HeaderKey::default())
        .shed(shed.clone())
        .quotas(ClientQuotas::builder("http_server", quota).build()?)
        .build()?;
    let mut stack = ServerStack::none();
    stack.admission = Some(Box::new(move |svc| wrap(svc, throttle)));
    let server = start(
        Workers::new(16, Duration::from_millis(5)),
        stack,
        prometheus,
    )
    .await?;
    let http = ClientStack::plain(Duration::from_secs(2)).build(transport())?;
    let url = server.url("/work");

    println!("Phase 1: quota 20/s per client; client-0 sends 100/s, client-1..8 send 10/s each\n");
    let mut rates = vec![(0, 100.0)];
    rates.extend((1..=8).map(|id| (id, 10.0)));
    let one_greedy = phase(&http, &url, &rates).await;
    for (id, ok, refused) in &one_greedy {
        println!("  client-{id}: served {ok:>3}, refused 429 {refused:>3}");
    }
    let polite_refused: u32 = one_greedy.iter().skip(1).map(|r| r.2).sum();

    shed.set(0.5);
    println!("\nPhase 2: shed fraction 0.5; client-1..8 send 10/s each\n");
    let shed_phase = phase(&http, &url, &rates[1..]).await;
    let mut mixed = 0;
    for (id, ok, refused) in &shed_phase {
        let verdict = match (ok, refused) {
            (_, 0) => "all served",
            (0, _) => "all refused",
            _ => {
                mixed += 1;
                "mixed"
            }
        };
        println!("  client-{id}: served {ok:>3}, refused 429 {refused:>3}  ({verdict})");
    }
    let shed_clients = shed_phase.iter().filter(|r| r.1 == 0).count();
    println!(
        "\nThe quota held the greedy client to its share without touching the others; the shed \
         fraction refused {shed_clients} of 8 clients outright and left the rest alone, so a \
         refused client fails its first call and its later calls never pile up."
    );
    println!(
        "summary: greedy_served={} greedy_refused={} polite_refused={polite_refused} shed_clients={shed_clients} mixed_clients={mixed}",
        one_greedy[0].1, one_greedy[0].2
    );
    Ok(())
}
