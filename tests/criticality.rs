//! Criticality: ordered levels that travel with a request, on the wire and through a handler.

use backstop::BoxError;
use backstop::context::{
    self, ByCriticality, CRITICALITY_HEADER, Criticality, CriticalityOf, HasCriticality,
    RequestContext, SameCriticality, ScopeLayer, inherit_context, send_context,
};
use backstop::timeout::headers::GRPC_TIMEOUT_HEADER;
use tower::util::MapRequestLayer;
use tower::{ServiceBuilder, ServiceExt};

type Req = http::Request<()>;

fn tagged(c: Criticality) -> Req {
    let mut req = Req::new(());
    req.set_criticality(c);
    req
}

#[test]
fn levels_are_ordered_lowest_first_and_parse_either_spelling() {
    let mut sorted = Criticality::ALL;
    sorted.sort();
    assert_eq!(sorted, Criticality::ALL);
    assert_eq!(Criticality::Sheddable.index(), 0);
    assert_eq!(Criticality::CriticalPlus.index(), 3);
    for c in Criticality::ALL {
        assert_eq!(c.as_str().parse(), Ok(c));
        assert_eq!(c.as_header_value().parse(), Ok(c));
    }
    assert_eq!(" critical-plus ".parse(), Ok(Criticality::CriticalPlus));
    assert!("urgent".parse::<Criticality>().is_err());
    assert!("critical_plu".parse::<Criticality>().is_err());
    assert_eq!(Criticality::default(), Criticality::Critical);
}

#[test]
fn precedence_request_then_scope_then_default() {
    let by = ByCriticality::new(Criticality::SheddablePlus);
    // Outside any scope, an untagged request takes the layer's default.
    assert_eq!(by.criticality_of(&Req::new(())), Criticality::SheddablePlus);
    let scope = RequestContext::new().with_criticality(Criticality::CriticalPlus);
    scope.sync_scope(|| {
        assert_eq!(by.criticality_of(&Req::new(())), Criticality::CriticalPlus);
        assert_eq!(
            by.criticality_of(&tagged(Criticality::Sheddable)),
            Criticality::Sheddable,
            "the request's own tag wins over the scope"
        );
        // `SameCriticality` never looks.
        assert_eq!(
            SameCriticality.criticality_of(&tagged(Criticality::Sheddable)),
            Criticality::default()
        );
    });
}

#[tokio::test(start_paused = true)]
async fn nested_scopes_keep_the_inner_tag_and_inherit_the_outer_one() {
    let outer = RequestContext::new().with_criticality(Criticality::Critical);
    outer
        .scope(async {
            assert_eq!(context::current_criticality(), Some(Criticality::Critical));
            RequestContext::new()
                .scope(async {
                    assert_eq!(context::current_criticality(), Some(Criticality::Critical));
                })
                .await;
            RequestContext::new()
                .with_criticality(Criticality::Sheddable)
                .scope(async {
                    assert_eq!(context::current_criticality(), Some(Criticality::Sheddable));
                })
                .await;
            // A task spawned for the request keeps its criticality.
            let spawned = context::spawn(async { context::current_criticality() })
                .await
                .unwrap();
            assert_eq!(spawned, Some(Criticality::Critical));
        })
        .await;
    assert_eq!(context::current_criticality(), None);
}

/// A server that reads the header, opens the scope, and calls a client that writes the header:
/// the downstream request carries the inbound criticality, and the deadline alongside it.
#[tokio::test(start_paused = true)]
async fn criticality_crosses_a_handler_on_the_wire() {
    // The next server down reports the header it was sent.
    let client = ServiceBuilder::new()
        .layer(MapRequestLayer::new(send_context::<()>))
        .service_fn(|req: Req| async move {
            Ok::<_, BoxError>((
                req.headers()
                    .get(CRITICALITY_HEADER)
                    .map(|v| v.to_str().unwrap().to_owned()),
                req.headers().contains_key(GRPC_TIMEOUT_HEADER),
            ))
        });
    let server = |client: tower::util::BoxCloneService<_, _, BoxError>| {
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(inherit_context::<()>))
            .layer(ScopeLayer::new())
            .service_fn(move |_req: Req| client.clone().oneshot(Req::new(())))
    };
    let client = tower::util::BoxCloneService::new(client);

    let mut inbound = Req::new(());
    inbound
        .headers_mut()
        .insert(CRITICALITY_HEADER, "sheddable_plus".parse().unwrap());
    inbound
        .headers_mut()
        .insert(GRPC_TIMEOUT_HEADER, "200m".parse().unwrap());
    let (seen, has_deadline) = server(client.clone()).oneshot(inbound).await.unwrap();
    assert_eq!(seen.as_deref(), Some("SHEDDABLE_PLUS"));
    assert!(has_deadline);

    // No tag inbound, none outbound: the next server applies its own default.
    let (seen, has_deadline) = server(client).oneshot(Req::new(())).await.unwrap();
    assert_eq!(seen, None);
    assert!(!has_deadline);
}

#[test]
fn an_explicit_tag_is_not_overwritten_by_the_header() {
    let mut req = tagged(Criticality::CriticalPlus);
    req.headers_mut()
        .insert(CRITICALITY_HEADER, "SHEDDABLE".parse().unwrap());
    let req = context::inherit_criticality(req);
    assert_eq!(req.criticality(), Some(Criticality::CriticalPlus));
    // A malformed header is no tag at all.
    let mut req = Req::new(());
    req.headers_mut()
        .insert(CRITICALITY_HEADER, "VERY".parse().unwrap());
    assert_eq!(context::inherit_criticality(req).criticality(), None);
}

mod admission {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::Duration;

    use backstop::context::{Criticality, HasCriticality};
    use backstop::pid::{AdmissionController, AdmissionLayer, signal_fn};
    use backstop::{BoxError, OverloadReason, find_overload};
    use tower::{Service, ServiceExt};

    /// Runs 20 s of one request a millisecond, 30% tagged `Critical` and the rest untagged
    /// (the layer's default: `Sheddable`), through an admission layer whose controller sheds
    /// exactly `shed` (a P controller on a constant signal). Returns the share refused of each
    /// over the last 8 s, once the filter on the shed that reaches higher levels has settled.
    async fn refused_shares(shed: f64) -> (f64, f64, AdmissionController) {
        let signal = Arc::new(AtomicU64::new(shed.to_bits()));
        let s = signal.clone();
        let controller = AdmissionController::builder(
            "crit",
            signal_fn(move |_| Some(f64::from_bits(s.load(Relaxed)))),
        )
        .setpoint(0.0)
        .gains(1.0, 0.0, 0.0)
        .seed(11)
        .build()
        .unwrap();
        let mut svc = tower::ServiceBuilder::new()
            .layer(AdmissionLayer::new(controller.clone()).by_criticality(Criticality::Sheddable))
            .service_fn(|_req: http::Request<()>| async { Ok::<_, BoxError>(()) });
        let (mut sent, mut refused) = ([0u64; 2], [0u64; 2]);
        for i in 0..20_000u32 {
            let critical = i % 10 < 3;
            let mut req = http::Request::new(());
            if critical {
                req.set_criticality(Criticality::Critical);
            }
            let k = usize::from(critical);
            let counted = i >= 12_000;
            sent[k] += u64::from(counted);
            if let Err(e) = svc.ready().await.unwrap().call(req).await {
                assert_eq!(
                    find_overload(e.as_ref()).unwrap().reason(),
                    OverloadReason::AdmissionDenied
                );
                refused[k] += u64::from(counted);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(controller.denied_at(Criticality::Critical) >= refused[1]);
        assert!(controller.denied_at(Criticality::Sheddable) >= refused[0]);
        assert_eq!(
            controller.denied(),
            Criticality::ALL
                .iter()
                .map(|&c| controller.denied_at(c))
                .sum::<u64>(),
            "the per-level counts add up"
        );
        (
            refused[0] as f64 / sent[0] as f64,
            refused[1] as f64 / sent[1] as f64,
            controller,
        )
    }

    /// A one-tick jump of the shed to its cap takes all the sheddable requests but reaches
    /// no critical one; the same shed held for seconds does.
    #[tokio::test(start_paused = true)]
    async fn only_a_lasting_shed_reaches_the_next_level() {
        let signal = Arc::new(AtomicU64::new(0.5f64.to_bits()));
        let s = signal.clone();
        let controller = AdmissionController::builder(
            "spill",
            signal_fn(move |_| Some(f64::from_bits(s.load(Relaxed)))),
        )
        .setpoint(0.0)
        .gains(1.0, 0.0, 0.0)
        .seed(3)
        .build()
        .unwrap();
        let mut svc = tower::ServiceBuilder::new()
            .layer(AdmissionLayer::new(controller.clone()).by_criticality(Criticality::Sheddable))
            .service_fn(|_req: http::Request<()>| async { Ok::<_, BoxError>(()) });
        let mut run = async |ms: u32| {
            for i in 0..ms {
                let mut req = http::Request::new(());
                if i % 10 < 3 {
                    req.set_criticality(Criticality::Critical);
                }
                let _ = svc.ready().await.unwrap().call(req).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        run(5_000).await; // the shares are learned, the slow filter sits at 0.5
        assert_eq!(controller.denied_at(Criticality::Critical), 0);
        signal.store(5.0f64.to_bits(), Relaxed); // capped at 0.95
        run(150).await;
        signal.store(0.5f64.to_bits(), Relaxed);
        run(1_000).await;
        assert_eq!(controller.denied_at(Criticality::Critical), 0, "a spike");
        let sheddable = controller.denied_at(Criticality::Sheddable);
        signal.store(5.0f64.to_bits(), Relaxed);
        run(10_000).await;
        assert!(controller.denied_at(Criticality::Sheddable) > sheddable + 6_900);
        // The filtered shed 0.95 − 0.45·e^(−t/2 s) passes the plateau (0.7 + 0.1) after 2.2 s;
        // from then the critical share refused, (shed − 0.8) / 0.3, rises toward one half.
        // Integrated over the 10 s at 300 critical requests/s: about 880 (1,500 without the
        // filter).
        let critical = controller.denied_at(Criticality::Critical);
        assert!((800..1_000).contains(&critical), "{critical}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shed_below_the_sheddable_share_never_touches_critical() {
        let (sheddable, critical, controller) = refused_shares(0.5).await;
        assert_eq!(critical, 0.0);
        // 0.5 of all requests from a 70% share: 71% of the sheddable ones.
        assert!((sheddable - 0.5 / 0.7).abs() < 0.03, "{sheddable}");
        assert!((controller.shed_fraction() - 0.5).abs() < 1e-9);
        assert_eq!(controller.level_probability(Criticality::CriticalPlus), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shed_above_it_takes_all_sheddable_then_some_critical() {
        // The cap: 1 − min_admission = 0.95 of all requests.
        let (sheddable, critical, _) = refused_shares(5.0).await;
        assert_eq!(sheddable, 1.0);
        // The next level loses only what passes the sheddable share by the default margin
        // (0.1): (0.95 − 0.7 − 0.1) / 0.3 of the critical requests.
        assert!((critical - 0.15 / 0.3).abs() < 0.04, "{critical}");
    }
}

#[test]
fn a_level_margin_out_of_range_is_refused_at_build() {
    for margin in [-0.1, 0.6, f64::NAN] {
        let err = backstop::pid::AdmissionController::builder(
            "m",
            backstop::pid::signal_fn(|_| Some(0.0)),
        )
        .level_margin(margin)
        .build()
        .unwrap_err();
        assert_eq!(err.field(), "level_margin");
        assert_eq!(err.expected(), "in [0, 0.5]");
    }
}

/// A full queue by criticality sheds its oldest lower-level waiter to admit a higher one, and
/// refuses as before when nobody lower waits.
#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_a_lower_level_for_a_higher_one() {
    use backstop::lifo_queue::LifoQueueLayer;
    use backstop::{OverloadReason, find_overload};
    use std::time::Duration;
    use tower::Service;

    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        LifoQueueLayer::builder("q")
            .max_in_flight(1)
            .max_waiting(2)
            .interval(Duration::from_secs(10))
            .target(Duration::from_secs(5))
            .by_criticality(Criticality::Sheddable)
            .build()
            .unwrap()
    });
    let queue = layer.queue().clone();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Req| async { Ok::<_, BoxError>(()) });
    let reason = |r: Result<(), BoxError>| find_overload(r.unwrap_err().as_ref()).unwrap().reason();

    let running = svc.call(tagged(Criticality::Critical));
    let sheddable_a = svc.call(Req::new(())); // untagged: the layer's default, sheddable
    let sheddable_b = svc.call(tagged(Criticality::Sheddable));
    assert_eq!(queue.waiting(), 2);
    let critical_c = svc.call(tagged(Criticality::Critical));
    assert_eq!(queue.waiting(), 2, "C took A's place");
    assert_eq!(reason(sheddable_a.await), OverloadReason::Shed);
    let critical_d = svc.call(tagged(Criticality::CriticalPlus));
    assert_eq!(reason(sheddable_b.await), OverloadReason::Shed);
    // Full of critical requests: a newcomer of the same level, or lower, is refused at once.
    assert_eq!(
        reason(svc.call(tagged(Criticality::Critical)).await),
        OverloadReason::QueueFull
    );
    assert_eq!(
        reason(svc.call(tagged(Criticality::SheddablePlus)).await),
        OverloadReason::QueueFull
    );
    running.await.unwrap();
    critical_c.await.unwrap();
    critical_d.await.unwrap();
    let stats = queue.stats();
    assert_eq!((stats.shed, stats.rejected, stats.admitted), (2, 2, 3));
    assert_eq!(stats.offered(), 7, "one outcome each");

    // The refusals by level: the two sheddable waiters evicted, one critical and one
    // sheddable-plus newcomer refused; the other six series registered at zero.
    let mut by_level = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != "backstop_queue_refused_by_criticality_total" {
            continue;
        }
        let label = |name: &str| {
            let found = key.key().labels().find(|l| l.key() == name);
            found.unwrap().value().to_owned()
        };
        let metrics_util::debugging::DebugValue::Counter(n) = value else {
            panic!("a counter")
        };
        by_level.insert((label("reason"), label("criticality")), n);
    }
    assert_eq!(
        by_level.len(),
        8,
        "every reason and level registered: {by_level:?}"
    );
    let count = |reason: &str, level: &str| by_level[&(reason.to_owned(), level.to_owned())];
    assert_eq!(count("shed", "sheddable"), 2);
    assert_eq!(count("queue_full", "critical"), 1);
    assert_eq!(count("queue_full", "sheddable_plus"), 1);
    assert_eq!(
        by_level.values().sum::<u64>(),
        4,
        "nothing else: {by_level:?}"
    );
}

/// Without `by_criticality` the queue ignores tags: the old behaviour.
#[tokio::test(start_paused = true)]
async fn a_queue_without_criticality_never_evicts() {
    use backstop::lifo_queue::LifoQueueLayer;
    use backstop::{OverloadReason, find_overload};
    use tower::Service;

    let layer = LifoQueueLayer::builder("q")
        .max_in_flight(1)
        .max_waiting(1)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Req| async { Ok::<_, BoxError>(()) });
    let running = svc.call(tagged(Criticality::Sheddable));
    let waiting = svc.call(tagged(Criticality::Sheddable));
    let refused = svc.call(tagged(Criticality::CriticalPlus)).await;
    assert_eq!(
        find_overload(refused.unwrap_err().as_ref())
            .unwrap()
            .reason(),
        OverloadReason::QueueFull
    );
    running.await.unwrap();
    waiting.await.unwrap();
}

/// The whole-client throttle by criticality: the shed fraction takes sheddable requests first;
/// within a level the choice of clients stays whole and stable.
#[tokio::test(start_paused = true)]
async fn the_throttle_sheds_sheddable_clients_first() {
    use backstop::throttle::{HeaderKey, ShedFraction, ThrottleLayer};
    use tower::Service;

    let shed = ShedFraction::builder("t")
        .seed(5)
        .epoch_origin(tokio::time::Instant::now())
        .build()
        .unwrap();
    let layer = ThrottleLayer::builder("t", HeaderKey::default())
        .shed(shed.clone())
        .build()
        .unwrap()
        .by_criticality(Criticality::Sheddable);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Req| async { Ok::<_, BoxError>(()) });
    // 1,000 clients; clients 0..300 send critical requests, the others untagged ones.
    let request = |client: u32| {
        let mut req = Req::new(());
        req.headers_mut()
            .insert("x-client-id", client.to_string().parse().unwrap());
        if client < 300 {
            req.set_criticality(Criticality::Critical);
        }
        req
    };
    let round = async |svc: &mut _| {
        let mut refused = [0u32; 2];
        let mut shed_clients = Vec::new();
        for client in 0..1000u32 {
            let svc: &mut tower::util::BoxService<Req, (), BoxError> = svc;
            if svc
                .ready()
                .await
                .unwrap()
                .call(request(client))
                .await
                .is_err()
            {
                refused[usize::from(client < 300)] += 1;
                shed_clients.push(client);
            }
        }
        (refused, shed_clients)
    };
    let mut svc = tower::util::BoxService::new(svc.clone());
    shed.set(0.5); // no mix seen yet: every level sheds half
    let (refused, _) = round(&mut svc).await;
    assert!(
        refused[1] > 100,
        "uniform before a mix is known: {refused:?}"
    );
    shed.set(0.5); // the mix is 70/30 now
    assert!((shed.fraction_at(Criticality::Sheddable) - 0.5 / 0.7).abs() < 1e-9);
    assert_eq!(shed.fraction_at(Criticality::Critical), 0.0);
    let (refused, first) = round(&mut svc).await;
    assert_eq!(refused[1], 0, "no critical request shed");
    assert!(
        (refused[0] as f64 / 700.0 - 0.5 / 0.7).abs() < 0.05,
        "{refused:?}"
    );
    // The same clients again: whole and stable.
    let (_, again) = round(&mut svc).await;
    assert_eq!(first, again);
}
