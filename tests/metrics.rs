//! The Little's-law meter and layer, on tokio's paused clock.

use std::collections::HashMap;
use std::time::Duration;

use backstop::classify::{Outcome, classify_fn};
use backstop::metrics::{LittleLayer, LittleMeter, names};
use backstop::{BoxError, OverloadReason, Overloaded};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::{advance, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

fn slow_ok(
    latency: Duration,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |_: ()| async move {
        sleep(latency).await;
        Ok::<_, BoxError>(())
    })
}

#[tokio::test(start_paused = true)]
async fn requests_of_100ms_every_10ms_make_a_concurrency_of_10() {
    let meter = LittleMeter::builder("steady")
        .capacity(20.0)
        .build()
        .unwrap();
    let svc = LittleLayer::new(meter.clone()).layer(slow_ok(Duration::from_millis(100)));

    let mut tasks = Vec::new();
    let mut start = None;
    for i in 0..900 {
        // Measure from 1 s to 9 s, well inside the steady state.
        if i == 100 {
            start = Some(meter.snapshot());
        }
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(
            async move { svc.ready().await?.call(()).await },
        ));
        sleep(Duration::from_millis(10)).await;
    }
    let report = meter.snapshot().since(&start.unwrap());
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    assert_eq!(report.interval, Duration::from_secs(8));
    let within_1pct = |x: f64| (x - 10.0).abs() <= 0.1;
    assert!(
        within_1pct(report.average_concurrency),
        "area-based concurrency {}",
        report.average_concurrency
    );
    assert!(
        within_1pct(report.completed_concurrency),
        "latency-sum concurrency {}",
        report.completed_concurrency
    );
    // Little's law: L = λW.
    let lambda_w = report.arrival_rate * report.mean_latency.unwrap().as_secs_f64();
    assert!(within_1pct(lambda_w), "λW = {lambda_w}");
    let utilization = report.utilization.unwrap();
    assert!((utilization - 0.5).abs() <= 0.005, "{utilization}");
}

#[tokio::test(start_paused = true)]
async fn long_requests_count_while_they_run() {
    let meter = LittleMeter::builder("long").build().unwrap();
    let before = meter.snapshot();
    let _a = meter.start();
    let _b = meter.start();
    advance(Duration::from_secs(3)).await;
    // Nothing has completed, yet two requests have been in flight for the whole interval.
    let report = meter.snapshot().since(&before);
    assert_eq!(report.completions, 0);
    assert_eq!(report.completed_concurrency, 0.0);
    assert_eq!(report.average_concurrency, 2.0);
    assert_eq!(report.in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn the_report_covers_the_last_full_window() {
    let meter = LittleMeter::builder("windowed")
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    // First window: one request busy for the whole second.
    let guard = meter.start();
    advance(Duration::from_secs(1)).await;
    guard.finish(Outcome::Success);
    assert_eq!(meter.report().interval, Duration::from_secs(1));
    assert_eq!(meter.report().average_concurrency, 1.0);
    // Second window: idle. The report now shows the idle window.
    advance(Duration::from_millis(1_500)).await;
    let report = meter.report();
    assert_eq!(report.average_concurrency, 0.0);
    assert_eq!(report.completions, 0);
}

type Snapshot = HashMap<(String, Vec<(String, String)>), f64>;

fn read(recorder: &DebuggingRecorder) -> Snapshot {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            ((key.name().to_owned(), labels), value)
        })
        .collect()
}

fn series(metric: &str, outcome: Option<&str>) -> (String, Vec<(String, String)>) {
    let mut labels = vec![("name".to_owned(), "api".to_owned())];
    if let Some(o) = outcome {
        labels.push(("outcome".to_owned(), o.to_owned()));
    }
    labels.sort();
    (metric.to_owned(), labels)
}

#[tokio::test(start_paused = true)]
async fn every_series_reads_zero_before_the_first_request_and_counts_outcomes_after() {
    let recorder = DebuggingRecorder::new();
    let meter = metrics::with_local_recorder(&recorder, || {
        LittleMeter::builder("api").capacity(4.0).build().unwrap()
    });

    let before = read(&recorder);
    let gauges = [
        names::IN_FLIGHT,
        names::LATENCY_SUM_SECONDS,
        names::CONCURRENCY_SECONDS,
        names::AVERAGE_CONCURRENCY,
        names::UTILIZATION,
    ];
    for g in gauges {
        assert_eq!(before.get(&series(g, None)), Some(&0.0), "{g}");
    }
    for o in names::OUTCOMES {
        assert_eq!(
            before.get(&series(names::REQUESTS, Some(o))),
            Some(&0.0),
            "{o}"
        );
    }
    assert_eq!(before.len(), gauges.len() + names::OUTCOMES.len());

    // One request of each outcome; 429-like answers count as overloads through the classifier.
    let classify = classify_fn(|r: Result<&u16, &BoxError>| match r {
        Ok(429) => Outcome::Overload(None),
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Retryable,
    });
    let mut svc = LittleLayer::new(meter.clone())
        .with_classifier(classify)
        .layer(service_fn(|code: u16| async move {
            sleep(Duration::from_millis(250)).await;
            match code {
                0 => Err::<u16, BoxError>("reset".into()),
                1 => Err(Overloaded::new(OverloadReason::Shed).into()),
                c => Ok(c),
            }
        }));
    svc.ready().await.unwrap().call(200).await.unwrap();
    svc.ready().await.unwrap().call(429).await.unwrap();
    svc.ready().await.unwrap().call(0).await.unwrap_err();
    // The classifier alone decides: this one calls every error retryable, even an `Overloaded`.
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    // A request whose caller gives up is counted as cancelled.
    let fut = svc.ready().await.unwrap().call(200);
    drop(fut);

    // The meter publishes from its own sums at most every 100 ms; a scrape handler (or a test)
    // publishes at once.
    meter.publish();
    let after = read(&recorder);
    let count = |o| after[&series(names::REQUESTS, Some(o))];
    assert_eq!(count("success"), 1.0);
    assert_eq!(count("overload"), 1.0);
    assert_eq!(count("error"), 2.0);
    assert_eq!(count("cancelled"), 1.0);
    assert_eq!(after[&series(names::IN_FLIGHT, None)], 0.0);
    let latency_sum = after[&series(names::LATENCY_SUM_SECONDS, None)];
    assert!((latency_sum - 1.0).abs() < 1e-9, "{latency_sum}");
    let area = after[&series(names::CONCURRENCY_SECONDS, None)];
    assert!((area - 1.0).abs() < 1e-6, "{area}");
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_meter() {
    let meter = LittleMeter::builder("shared").build().unwrap();
    let svc = LittleLayer::new(meter.clone()).layer(slow_ok(Duration::from_millis(10)));
    let mut a = svc.clone();
    let mut b = svc;
    let mut c = b.clone();
    let before = meter.snapshot();
    a.ready().await.unwrap().call(()).await.unwrap();
    b.ready().await.unwrap().call(()).await.unwrap();
    c.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(meter.snapshot().since(&before).completions, 3);
}

#[test]
fn invalid_configs_name_the_field() {
    assert_eq!(
        LittleMeter::builder("  ").build().unwrap_err().field(),
        "name"
    );
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = LittleMeter::builder("x").capacity(bad).build().unwrap_err();
        assert_eq!(err.field(), "capacity", "{bad}");
    }
    let err = LittleMeter::builder("x")
        .window(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "window");
}

#[test]
fn threads_on_their_own_shards_lose_no_event() {
    // Each thread lands on its own shard of sums; a snapshot adds the shards up.
    let builder = LittleMeter::builder("threads");
    // Under Miri: no CPU counter there, and fewer requests (each event is interpreted).
    let (builder, per_thread) = if cfg!(miri) {
        (builder.clock(backstop::clock::Clock::manual().0), 50)
    } else {
        (builder, 5_000)
    };
    let meter = builder.build().unwrap();
    let before = meter.snapshot();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..per_thread {
                    let guard = meter.start();
                    if i % 2 == 0 {
                        guard.finish(Outcome::Success);
                    } else {
                        drop(guard);
                    }
                }
            });
        }
    });
    let report = meter.snapshot().since(&before);
    assert_eq!(report.arrivals, 4 * per_thread);
    assert_eq!(report.completions, 4 * per_thread);
    assert_eq!(report.in_flight, 0);
    assert_eq!(meter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn series_lag_until_published_and_one_call_publishes_every_meter() {
    let recorder = DebuggingRecorder::new();
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        let a = LittleMeter::builder("lag_a").build().unwrap();
        let b = LittleMeter::builder("lag_b").build().unwrap();
        (a, b)
    });
    // One snapshot per check: the debugging recorder's snapshot drains its counters.
    let successes = || {
        let snap = read(&recorder);
        ["lag_a", "lag_b"].map(|name| {
            snap[&(
                names::REQUESTS.to_owned(),
                vec![
                    ("name".to_owned(), name.to_owned()),
                    ("outcome".to_owned(), "success".to_owned()),
                ],
            )]
        })
    };
    // The request path touches no series: within 100 ms nothing is published.
    for meter in [&a, &b] {
        meter.start().finish(Outcome::Success);
        meter.start().finish(Outcome::Success);
    }
    assert_eq!(successes(), [0.0, 0.0]);
    backstop::metrics::publish();
    assert_eq!(successes(), [2.0, 2.0]);
    // Once 100 ms have passed, the next event publishes by itself (the snapshot reads the new
    // increment).
    let running = a.start();
    advance(Duration::from_millis(100)).await;
    running.finish(Outcome::Success);
    assert_eq!(successes(), [1.0, 0.0]);
}

/// The meter reads the clock it is given: on a manual clock every figure is exact, with no
/// runtime at all.
#[test]
fn a_meter_on_a_manual_clock_measures_exactly() {
    use backstop::clock::Clock;
    let (clock, time) = Clock::manual();
    let meter = LittleMeter::builder("manual")
        .capacity(4.0)
        .clock(clock)
        .build()
        .unwrap();
    let before = meter.snapshot();
    let a = meter.start();
    time.advance(Duration::from_millis(250));
    let b = meter.start();
    time.advance(Duration::from_millis(250));
    a.finish(Outcome::Success);
    time.advance(Duration::from_millis(500));
    let report = meter.snapshot().since(&before);
    assert_eq!(report.interval, Duration::from_secs(1));
    // a: 500 ms done; b: 750 ms so far.
    assert_eq!(report.average_concurrency, 1.25);
    assert_eq!(report.completed_concurrency, 0.5);
    assert_eq!(report.mean_latency, Some(Duration::from_millis(500)));
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.utilization, Some(1.25 / 4.0));
    drop(b);
    assert_eq!(meter.in_flight(), 0);
}

/// The default clock is chosen when the meter is built: one built before the pause keeps real
/// time (the trap the docs name), one built after it, or given `Clock::tokio()`, sees the
/// test's `advance`.
#[tokio::test]
#[cfg_attr(
    miri,
    ignore = "the CPU's counter (cpuid, rdtsc) is not there under Miri"
)]
async fn the_default_clock_follows_a_pause_only_when_built_after_it() {
    use backstop::clock::Clock;
    let before_pause = LittleMeter::builder("before").build().unwrap();
    let forced = LittleMeter::builder("forced")
        .clock(Clock::tokio())
        .build()
        .unwrap();
    tokio::time::pause();
    let after_pause = LittleMeter::builder("after").build().unwrap();
    let guards = [&before_pause, &forced, &after_pause].map(|m| m.start());
    advance(Duration::from_secs(3600)).await;
    drop(guards);
    let latency = |m: &LittleMeter| m.report().mean_latency.unwrap();
    assert_eq!(latency(&forced), Duration::from_secs(3600));
    assert_eq!(latency(&after_pause), Duration::from_secs(3600));
    let real = latency(&before_pause);
    assert!(real < Duration::from_secs(60), "{real:?}");
}

/// The area a reading reports since `base` (taken at the epoch), in whole µs: recovered from
/// the average concurrency, exact while the area is below 2^53 µs.
fn area_us(report: &backstop::metrics::LittleReport) -> u64 {
    (report.average_concurrency * report.interval.as_secs_f64() * 1e6).round() as u64
}

/// Snapshots taken while requests depart on another thread than the one they arrived on are
/// exact and never go back. (The first meter read a departure's words one by one: a snapshot
/// between them counted the request in flight *and* completed, the next one counted it once,
/// and `since` wrapped the difference: 2^64 − 1 arrivals, ~1.8e13 average concurrency.)
///
/// The departing thread is the only one that moves the manual clock, by 1 µs after each
/// departure, so departure `k` ends at 1 s + k µs, and a reading that has seen `c` departures
/// at `now` must report exactly c·1 s + c(c − 1)/2 µs closed plus (N − c)·now open. The
/// requests arrived on the test's thread: a departure seen without its arrival would show as
/// a wrapped in-flight count.
#[test]
fn snapshots_racing_departures_are_exact_and_never_go_back() {
    use backstop::clock::Clock;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let n: u64 = if cfg!(miri) { 100 } else { 20_000 };
    let (clock, time) = Clock::manual();
    let meter = LittleMeter::builder("racing_departures")
        .window(Duration::from_secs(24 * 3600))
        .clock(clock)
        .build()
        .unwrap();
    let base = meter.snapshot();
    let guards: Vec<_> = (0..n).map(|_| meter.start()).collect();
    time.advance(Duration::from_secs(1));
    let done = AtomicBool::new(false);
    let (mut readings, mut seen_mid_race) = (0u64, 0u64);
    let mut prev = meter.snapshot();
    let (mut prev_area, mut prev_completions) = (area_us(&prev.since(&base)), 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            for (k, g) in guards.into_iter().enumerate() {
                g.finish(Outcome::Success);
                time.advance(Duration::from_micros(1));
                // On a loaded box, let the reader in now and then so that the two overlap.
                if k % 1024 == 0 {
                    std::thread::yield_now();
                }
            }
            done.store(true, Relaxed);
        });
        loop {
            let finished = done.load(Relaxed);
            let cur = meter.snapshot();
            let total = cur.since(&base);
            let step = cur.since(&prev);
            let (c, now_us) = (total.completions, total.interval.as_micros() as u64);
            readings += 1;
            if c > 0 && c < n {
                seen_mid_race += 1;
            }
            assert_eq!(total.arrivals, n, "reading {readings}: arrivals");
            assert_eq!(
                step.arrivals, 0,
                "reading {readings}: no arrival after the set-up"
            );
            assert_eq!(
                total.in_flight + c,
                n,
                "reading {readings}: in flight + completed"
            );
            let exact = c * 1_000_000 + c * c.saturating_sub(1) / 2 + (n - c) * now_us;
            let area = area_us(&total);
            assert_eq!(
                area, exact,
                "reading {readings}: {c} completed at {now_us} µs"
            );
            assert!(
                area >= prev_area && c >= prev_completions,
                "reading {readings} went back: area {prev_area} -> {area} µs, completions \
                 {prev_completions} -> {c}"
            );
            if step.interval > Duration::ZERO {
                assert_eq!(
                    area_us(&step),
                    area - prev_area,
                    "reading {readings}: a step"
                );
            }
            (prev, prev_area, prev_completions) = (cur, area, c);
            if finished {
                break;
            }
        }
    });
    assert_eq!(prev_completions, n);
    eprintln!("{readings} readings, {seen_mid_race} during the departures");
}

/// The same race on the shard that threads past the seventh share (`fetch_add`s, two writers
/// at once), with arrivals racing too, on a clock that stands still: every request that
/// arrived at 0 has run 1 s whether it is still in flight or done, and those that arrive and
/// depart during the race take no time, so every reading's area is exactly N s, its arrivals
/// are exactly its completions plus its requests in flight, and neither count goes back.
#[test]
fn snapshots_racing_the_shared_shard_are_exact() {
    use backstop::clock::Clock;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let n: u64 = if cfg!(miri) { 100 } else { 20_000 };
    let (clock, time) = Clock::manual();
    let meter = LittleMeter::builder("racing_shared")
        .clock(clock)
        .build()
        .unwrap();
    let base = meter.snapshot();
    let mut guards: Vec<_> = (0..n).map(|_| meter.start()).collect();
    let halves = [guards.split_off(n as usize / 2), guards];
    time.advance(Duration::from_secs(1));
    // Seven threads that count once and stay: they hold every owned shard that is free, so
    // the departing threads that come after them share the last one.
    let (hold, release) = (Barrier::new(8), Barrier::new(8));
    let running = AtomicUsize::new(2);
    let (mut readings, mut prev) = (0u64, (0u64, 0u64));
    std::thread::scope(|s| {
        for _ in 0..7 {
            s.spawn(|| {
                meter.start().finish(Outcome::Success);
                hold.wait();
                release.wait();
            });
        }
        hold.wait();
        for half in halves {
            let (meter, running) = (&meter, &running);
            s.spawn(move || {
                for (i, g) in half.into_iter().enumerate() {
                    if i % 2 == 0 {
                        g.finish(Outcome::Success);
                    } else {
                        drop(g);
                    }
                    meter.start().finish(Outcome::Final);
                }
                running.fetch_sub(1, Relaxed);
            });
        }
        // An assertion that fails must still let the seven threads go, or the scope waits on
        // them for ever.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop {
                let finished = running.load(Relaxed) == 0;
                let total = meter.snapshot().since(&base);
                readings += 1;
                assert_eq!(total.interval, Duration::from_secs(1));
                assert_eq!(
                    total.average_concurrency, n as f64,
                    "reading {readings}: the area of N requests of 1 s"
                );
                assert_eq!(
                    total.arrivals,
                    total.completions + total.in_flight,
                    "reading {readings}"
                );
                assert!(
                    total.arrivals >= prev.0 && total.completions >= prev.1,
                    "reading {readings} went back: {total:?}"
                );
                prev = (total.arrivals, total.completions);
                if finished {
                    break;
                }
            }
        }));
        release.wait();
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    });
    let total = meter.snapshot().since(&base);
    assert_eq!((total.arrivals, total.in_flight), (2 * n + 7, 0));
    eprintln!("{readings} readings");
}
