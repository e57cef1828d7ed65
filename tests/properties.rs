//! Property tests for the foundation layers: every request gets exactly one outcome, and the
//! meter gives back every request it counted, whatever the timings and cancellations.

use std::time::Duration;

use backstop::BoxError;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::timeout::{Deadline, Elapsed, ElapsedCause, HasDeadline, TimeoutLayer};
use http::Request;
use proptest::prelude::*;
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
struct Call {
    /// When the call starts, in ms from the beginning of the run.
    start_ms: u64,
    /// How long the inner service takes.
    work_ms: u64,
    /// The caller's deadline, in ms from the call's start, if it has one.
    deadline_ms: Option<u64>,
    /// The caller drops the response future after this many ms, if it gives up.
    abandon_ms: Option<u64>,
    /// Whether the inner service fails instead of answering.
    fails: bool,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0u64..2_000,
        0u64..1_500,
        proptest::option::of(0u64..1_500),
        proptest::option::of(0u64..1_500),
        any::<bool>(),
    )
        .prop_map(|(start_ms, work_ms, deadline_ms, abandon_ms, fails)| Call {
            start_ms,
            work_ms,
            deadline_ms,
            abandon_ms,
            fails,
        })
}

/// What the caller saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Answer,
    InnerError,
    TimedOut(ElapsedCause),
    Abandoned,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_call_gets_exactly_the_outcome_its_timings_imply(
        timeout_ms in 1u64..1_000,
        fraction_pct in 1u32..=100,
        calls in proptest::collection::vec(call(), 1..40),
    ) {
        let fraction = f64::from(fraction_pct) / 100.0;
        let rt = paused_runtime();
        let (seen, meter_report) = rt.block_on(async {
            let meter = LittleMeter::builder("prop").build().unwrap();
            let timeout = TimeoutLayer::builder()
                .timeout(Duration::from_millis(timeout_ms))
                .fraction(fraction)
                .build()
                .unwrap();
            let inner = service_fn(|req: Request<(u64, bool)>| async move {
                let (work_ms, fails) = *req.body();
                sleep(Duration::from_millis(work_ms)).await;
                if fails { Err::<(), BoxError>("inner failure".into()) } else { Ok(()) }
            });
            let svc = LittleLayer::new(meter.clone()).layer(timeout.layer(inner));
            let origin = Instant::now();
            let before = meter.snapshot();

            let tasks: Vec<_> = calls.iter().cloned().map(|c| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(origin + Duration::from_millis(c.start_ms)).await;
                    let mut req = Request::new((c.work_ms, c.fails));
                    if let Some(d) = c.deadline_ms {
                        req.set_deadline(Deadline::after(Duration::from_millis(d)));
                    }
                    let fut = svc.ready().await.unwrap().call(req);
                    let give_up = c.abandon_ms.map_or(Duration::MAX, Duration::from_millis);
                    match tokio::time::timeout(give_up, fut).await {
                        Err(_) => Seen::Abandoned,
                        Ok(Ok(())) => Seen::Answer,
                        Ok(Err(e)) => match e.downcast_ref::<Elapsed>() {
                            Some(elapsed) => Seen::TimedOut(elapsed.cause()),
                            None => Seen::InnerError,
                        },
                    }
                })
            }).collect();
            let mut seen = Vec::new();
            for t in tasks {
                seen.push(t.await.unwrap());
            }
            (seen, meter.snapshot().since(&before))
        });

        for (c, seen) in calls.iter().zip(&seen) {
            // The limit the layer should apply, in ms from the call's start.
            let own = timeout_ms as f64;
            let caller = c.deadline_ms.map(|d| d as f64 * fraction);
            let limit = caller.map_or(own, |c| c.min(own));
            let expired_on_arrival = c.deadline_ms == Some(0);
            let expected_cause = if caller.is_some_and(|c| c < own) {
                ElapsedCause::CallerDeadline
            } else {
                ElapsedCause::OwnTimeout
            };
            let finish = if expired_on_arrival { 0.0 } else { (c.work_ms as f64).min(limit) };
            let abandoned = c.abandon_ms.is_some_and(|a| (a as f64) <= finish);
            let expected = if abandoned {
                Seen::Abandoned
            } else if expired_on_arrival {
                Seen::TimedOut(ElapsedCause::CallerDeadline)
            } else if (c.work_ms as f64) < limit {
                if c.fails { Seen::InnerError } else { Seen::Answer }
            } else {
                Seen::TimedOut(expected_cause)
            };
            // Ties (the work ends on the very tick the timer fires, or the caller gives up on it)
            // may go either way; every other case is exact.
            let tie = (c.work_ms as f64 - limit).abs() < 1.0
                || c.abandon_ms.is_some_and(|a| (a as f64 - finish).abs() < 1.0);
            if !tie {
                prop_assert_eq!(seen, &expected, "call {:?}", c);
            }
        }

        // The meter counted every call exactly once and holds none of them afterwards.
        prop_assert_eq!(meter_report.arrivals, calls.len() as u64);
        prop_assert_eq!(meter_report.completions, calls.len() as u64);
        prop_assert_eq!(meter_report.in_flight, 0);
        // With nothing left in flight, the area under the curve is exactly the latency sum.
        let diff = (meter_report.average_concurrency - meter_report.completed_concurrency).abs();
        prop_assert!(diff * meter_report.interval.as_secs_f64() < 1e-3 * calls.len() as f64);
    }
}
