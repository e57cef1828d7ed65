//! The simulation harness measures what it claims to: goodput and latency below capacity,
//! Little's law on the simulated server, determinism, and the naive congestion collapse.

use std::time::Duration;

use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::sim::{
    Arrivals, CallPolicy, Chain, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario,
    ServiceTime, SimService, WebApp, table,
};
use tower::ServiceBuilder;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rel(a: f64, b: f64) -> f64 {
    (a / b - 1.0).abs()
}

/// 10 workers, log-normal 100 ms: capacity 100/s; offered 30/s of Poisson arrivals.
fn light_load(seed: u64) -> Scenario {
    Scenario::builder("light")
        .seed(seed)
        .profile(LoadProfile::new().step(s(300), 30.0))
        .run_for(s(305))
        .clients(ClientBehavior {
            patience: s(5),
            ..ClientBehavior::default()
        })
        .hop(Hop::new(
            "web",
            10,
            ServiceTime::LogNormal {
                mean: ms(100),
                cv: 0.5,
            },
        ))
        .build()
        .unwrap()
}

#[test]
fn below_capacity_goodput_equals_offered_and_latency_is_the_service_time() {
    let report = light_load(11).run();
    let sum = &report.summary;
    assert!(sum.offered > 8_000, "offered {}", sum.offered);
    assert_eq!(sum.succeeded, sum.offered, "every request answered in time");
    assert_eq!(sum.left, 0);
    assert!(rel(sum.offered_rps, 30.0) < 0.05, "{}", sum.offered_rps);
    assert_eq!(sum.attempts_per_request, 1.0);
    let mean = sum.mean_latency.unwrap().as_secs_f64();
    assert!(rel(mean, 0.100) < 0.02, "mean latency {mean}");
    assert_eq!(sum.wasted, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn littles_law_holds_on_the_simulated_server() {
    // Near capacity (90%), so requests queue: L = λW must still hold, and the sim's own
    // in-flight area must agree with backstop's LittleLayer, measured independently.
    let meter = LittleMeter::builder("web").capacity(10.0).build().unwrap();
    let before = meter.snapshot();
    let layer = LittleLayer::new(meter.clone());
    let report = Scenario::builder("little")
        .seed(5)
        .profile(LoadProfile::new().step(s(200), 90.0))
        .run_for(s(210))
        .clients(ClientBehavior {
            patience: s(60),
            ..ClientBehavior::default()
        })
        .hop(
            Hop::new("web", 10, ServiceTime::Exponential { mean: ms(100) }).stack(move |server| {
                SimService::new(ServiceBuilder::new().layer(layer.clone()).service(server))
            }),
        )
        .build()
        .unwrap()
        .run_async()
        .await;
    let little = meter.snapshot().since(&before);
    let hop = &report.hops[0];
    assert_eq!(hop.in_flight_at_end, 0);
    let lambda_w = hop.arrival_rate * hop.mean_latency.unwrap().as_secs_f64();
    assert!(
        hop.mean_in_flight > 5.0,
        "queueing expected: {}",
        hop.mean_in_flight
    );
    assert!(
        rel(lambda_w, hop.mean_in_flight) < 0.02,
        "{lambda_w} vs {}",
        hop.mean_in_flight
    );
    assert!(hop.little_error().unwrap().abs() < 0.02);
    assert!(
        rel(little.average_concurrency, hop.mean_in_flight) < 0.02,
        "meter {} vs sim {}",
        little.average_concurrency,
        hop.mean_in_flight
    );
    assert_eq!(little.arrivals, hop.arrivals);
}

#[test]
fn same_seed_same_table_and_another_seed_another() {
    let story = WebApp::scaled(0.2);
    let a = story.naive().unwrap().run();
    let b = story.naive().unwrap().run();
    let c = story.with_seed(99).naive().unwrap().run();
    assert_eq!(table(&[&a]), table(&[&b]));
    assert_eq!(a.series_table(), b.series_table());
    assert_eq!(a, b);
    assert_ne!(a.series_table(), c.series_table());
}

#[test]
fn naive_web_app_collapses_and_stays_collapsed() {
    let report = WebApp::default().naive().unwrap().run();
    let sum = &report.summary;
    assert_eq!(report.capacity_rps, 100.0);
    assert!(sum.surge_offered_rps > 180.0);
    assert!(
        sum.surge_goodput_fraction < 0.3,
        "goodput during the surge {}",
        sum.surge_goodput_fraction
    );
    assert!(!sum.recovery.recovered(), "{}", sum.recovery);
    assert!(sum.recovery.seconds().unwrap() > 30.0, "{}", sum.recovery);
    // The attempts multiply: retries and reloads.
    assert!(sum.attempts_per_request > 3.0);
    assert!(sum.wasted_fraction() > 0.5);
}

#[test]
fn chains_and_retries_multiply_attempts_across_hops() {
    // client → api → storage; the storage hop is overloaded, every layer retries 2 times.
    let naive = CallPolicy {
        attempt_timeout: Some(ms(200)),
        retry: RetryPolicy::Naive {
            retries: 2,
            backoff: ms(10),
            jitter: 0.0,
        },
    };
    let build = |storage_workers: usize| {
        Scenario::builder("layers")
            .seed(3)
            .arrivals(Arrivals::Constant)
            .profile(LoadProfile::new().step(s(20), 20.0))
            .run_for(s(25))
            .clients(ClientBehavior {
                patience: s(2),
                call: naive,
                chain: Chain {
                    calls: 2,
                    chain_retries: 0,
                },
                ..ClientBehavior::default()
            })
            .hop(Hop::new("api", 50, ServiceTime::Fixed(ms(5))))
            .hop(
                Hop::new("storage", storage_workers, ServiceTime::Fixed(ms(20)))
                    .caller_policy(naive)
                    .calls(2),
            )
            .build()
            .unwrap()
            .run()
    };
    let healthy = build(10);
    // 20/s × 2 chain calls = 40/s at api, × 2 calls = 80/s at storage; no retries needed.
    assert_eq!(healthy.summary.attempts_per_request, 2.0);
    assert_eq!(healthy.hops[1].sent, 2 * healthy.hops[0].sent);
    assert_eq!(healthy.summary.succeeded, healthy.summary.offered);

    let overloaded = build(1); // storage capacity 50/s < 80/s
    let api = &overloaded.hops[0];
    let storage = &overloaded.hops[1];
    // Retries at both layers amplify: storage sees more than 2 calls per api request.
    assert!(api.sent as f64 > 2.0 * overloaded.summary.offered as f64);
    assert!(
        storage.sent as f64 > 2.5 * api.sent as f64,
        "{} vs {}",
        storage.sent,
        api.sent
    );
    assert!(storage.wasted > Duration::ZERO);
}

#[test]
fn invalid_scenarios_are_rejected_with_the_field() {
    let no_hop = Scenario::builder("x")
        .profile(LoadProfile::new().step(s(1), 1.0))
        .build()
        .unwrap_err();
    assert_eq!(no_hop.field(), "hops");
    let zero = Scenario::builder("x")
        .profile(LoadProfile::new().step(s(1), 1.0))
        .hop(Hop::new("web", 0, ServiceTime::Fixed(ms(1))))
        .build()
        .unwrap_err();
    assert_eq!(zero.field(), "hop.capacity");
    let jitter = Scenario::builder("x")
        .profile(LoadProfile::new().step(s(1), 1.0))
        .clients(ClientBehavior {
            call: CallPolicy {
                attempt_timeout: None,
                retry: RetryPolicy::Naive {
                    retries: 1,
                    backoff: ms(1),
                    jitter: 2.0,
                },
            },
            ..ClientBehavior::default()
        })
        .hop(Hop::new("web", 1, ServiceTime::Fixed(ms(1))))
        .build()
        .unwrap_err();
    assert_eq!(jitter.field(), "client.call");
}
