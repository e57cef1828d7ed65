//! BackpressureLayer: bounds, FIFO order, refusals at once, shared state, cancellation, permits
//! held until the body ends, gauges, no false overloads under a busy runtime, and properties.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::Poll;
use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::{BoxError, OverloadReason, find_overload};
use futures::FutureExt;
use proptest::prelude::*;
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

fn reason(err: &BoxError) -> Option<OverloadReason> {
    find_overload(err.as_ref()).map(|o| o.reason())
}

/// A handler that sleeps `ms` and records the highest concurrency it saw.
fn sleepy(
    peak: Arc<AtomicUsize>,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    let now = Arc::new(AtomicUsize::new(0));
    // Counts down on drop too, so a cancelled handler leaves the count right.
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, SeqCst);
        }
    }
    service_fn(move |ms: u64| {
        let (peak, now) = (peak.clone(), now.clone());
        async move {
            let n = now.fetch_add(1, SeqCst) + 1;
            let _running = Running(now);
            peak.fetch_max(n, SeqCst);
            sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(ms)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn bounds_in_flight_and_waiting_and_refuses_the_rest_at_once() {
    let layer = BackpressureLayer::new("backpressure", 2, 3).unwrap();
    let limiter = layer.limiter().clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(sleepy(peak.clone()));

    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(tokio::spawn(svc.ready().await.unwrap().call(100)));
    }
    tokio::task::yield_now().await;
    assert_eq!(limiter.in_flight(), 2);
    assert_eq!(limiter.waiting(), 3);

    let mut served = 0;
    let mut refused_at = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(e) => {
                assert_eq!(reason(&e), Some(OverloadReason::QueueFull));
                refused_at.push(Instant::now());
            }
        }
    }
    assert_eq!(served, 5);
    assert_eq!(refused_at.len(), 5);
    assert_eq!(peak.load(SeqCst), 2, "never more than 2 in flight");
    // 5 requests of 100 ms on 2 slots: 300 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    assert_eq!((stats.admitted, stats.rejected, stats.queued), (5, 5, 3));
}

#[tokio::test(start_paused = true)]
async fn refusal_is_immediate_not_after_a_wait() {
    let mut svc = BackpressureLayer::new("backpressure", 1, 0)
        .unwrap()
        .layer(sleepy(Arc::default()));
    let running = tokio::spawn(svc.ready().await.unwrap().call(1_000));
    tokio::task::yield_now().await;
    let t = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(reason(&err), Some(OverloadReason::QueueFull));
    assert_eq!(t.elapsed(), Duration::ZERO);
    running.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = order.clone();
    let mut svc = BackpressureLayer::new("backpressure", 1, 10)
        .unwrap()
        .layer(service_fn(move |id: u32| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(id);
                sleep(Duration::from_millis(10)).await;
                Ok::<_, BoxError>(id)
            }
        }));
    let mut calls = Vec::new();
    for id in 0..6 {
        calls.push(tokio::spawn(svc.ready().await.unwrap().call(id)));
        sleep(Duration::from_millis(1)).await;
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn clones_and_sibling_services_share_one_limiter() {
    let layer = BackpressureLayer::new("backpressure", 1, 0).unwrap();
    let mut a = layer.layer(sleepy(Arc::default()));
    let mut b = a.clone();
    let mut c = layer.layer(sleepy(Arc::default())); // another service from the same layer
    let running = tokio::spawn(a.ready().await.unwrap().call(100));
    tokio::task::yield_now().await;
    for svc in [&mut b, &mut c] {
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert_eq!(reason(&err), Some(OverloadReason::QueueFull));
    }
    running.await.unwrap().unwrap();
    assert_eq!(b.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(layer.limiter().stats().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_the_queue_at_once_and_a_dropped_runner_frees_its_slot() {
    let layer = BackpressureLayer::new("backpressure", 1, 5).unwrap();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(sleepy(Arc::default()));

    let mut running = Box::pin(svc.ready().await.unwrap().call(1_000));
    assert!((&mut running).now_or_never().is_none());
    let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(svc.call(10))).collect::<Vec<_>>();
    for w in &mut waiters {
        assert!(w.now_or_never().is_none());
    }
    assert_eq!(limiter.waiting(), 3);
    drop(waiters.remove(1));
    assert_eq!(limiter.waiting(), 2, "cancelled waiter left at once");
    drop(running);
    assert_eq!(
        limiter.in_flight(),
        1,
        "slot went straight to the next waiter"
    );
    assert_eq!(limiter.waiting(), 1);
    // The last two: one holds a granted slot it never collected (it counts as admitted), and
    // dropping it grants the other, which is dropped in turn. Both slots come back.
    drop(waiters);
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    assert_eq!((stats.admitted, stats.cancelled), (3, 1));
    // The full limit is available again.
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_reach_the_caller_and_free_the_slot() {
    let layer = BackpressureLayer::new("backpressure", 1, 0).unwrap();
    let limiter = layer.limiter().clone();
    // A service that is never ready: tower's `ConcurrencyLimit(0)`-like failure via an error.
    #[derive(Clone)]
    struct Broken;
    impl Service<()> for Broken {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err("inner broken".into()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = layer.layer(Broken);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.to_string(), "inner broken");
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn invalid_configuration_is_rejected_with_the_field_named() {
    let err = BackpressureLayer::new("backpressure", 0, 1).unwrap_err();
    assert_eq!(err.field(), "max_in_flight");
    assert!(
        BackpressureLayer::new("backpressure", 1, 0).is_ok(),
        "no queue at all is allowed"
    );
}

#[tokio::test(start_paused = true)]
async fn gauges_report_queue_length_and_oldest_waiter_age() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BackpressureLayer::builder("gauges_test")
            .max_in_flight(1)
            .max_waiting(2)
            .build()
            .unwrap()
    });
    // A snapshot of the debugging recorder resets what it read (gauges to 0, counters count
    // again from 0), so each check point takes one snapshot and reads it.
    type Snap = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;
    let read = |snap: &Snap, metric: &str, reason: Option<&str>| -> f64 {
        snap.iter()
            .find(|(k, ..)| {
                k.key().name() == metric
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "name" && l.value() == "gauges_test")
                    && reason.is_none_or(|r| k.key().labels().any(|l| l.value() == r))
            })
            .map(|(.., v)| match v {
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Counter(c) => *c as f64,
                DebugValue::Histogram(_) => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{metric} not registered"))
    };
    let length = backstop::metrics::names::QUEUE_LENGTH;
    let age = backstop::metrics::names::QUEUE_OLDEST_WAIT_SECONDS;
    let refused = backstop::metrics::names::REFUSED;
    // Registered at build time: zeros, not missing.
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(read(&snap, length, None), 0.0);
    assert_eq!(read(&snap, age, None), 0.0);
    assert_eq!(read(&snap, refused, Some("queue_full")), 0.0);

    let mut svc = layer.layer(sleepy(Arc::default()));
    let running = tokio::spawn(svc.ready().await.unwrap().call(1_000));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;
    sleep(Duration::from_millis(250)).await;
    let _second = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(read(&snap, length, None), 2.0);
    assert_eq!(
        read(&snap, age, None),
        0.25,
        "oldest waiter has waited 250 ms"
    );
    sleep(Duration::from_millis(250)).await;
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(reason(&err), Some(OverloadReason::QueueFull));
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(read(&snap, refused, Some("queue_full")), 1.0);
    assert_eq!(
        read(&snap, age, None),
        0.5,
        "a refusal refreshes the age of a stuck queue"
    );
    running.await.unwrap().unwrap();
    waiter.await.unwrap().unwrap();
    _second.await.unwrap().unwrap();
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(read(&snap, length, None), 0.0);
    assert_eq!(layer.limiter().stats().waiting, 0);
}

#[cfg(feature = "http")]
mod http_bodies {
    use super::*;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel: ends when the sender is dropped.
    struct Body(mpsc::Receiver<&'static [u8]>);

    impl http_body::Body for Body {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn channel() -> (mpsc::Sender<&'static [u8]>, Body) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Body(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn the_slot_is_held_until_the_body_has_ended() {
        let layer = BackpressureLayer::builder("backpressure")
            .max_in_flight(1)
            .max_waiting(0)
            .hold_until_body_end()
            .build()
            .unwrap();
        let limiter = layer.limiter().clone();
        let (tx, body) = channel();
        let body = Arc::new(std::sync::Mutex::new(Some(body)));
        let mut svc = layer.layer(service_fn(move |_req: http::Request<()>| {
            let body = body.lock().unwrap().take().expect("one request");
            async move { Ok::<_, BoxError>(http::Response::new(body)) }
        }));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        let mut body = response.into_body();
        assert!(body.holds_permit());
        assert_eq!(limiter.in_flight(), 1, "headers sent, body still streaming");
        tx.send(b"hello").await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), b"hello");
        assert_eq!(limiter.in_flight(), 1);
        drop(tx); // end of stream
        assert!(body.frame().await.is_none());
        assert!(!body.holds_permit());
        assert_eq!(
            limiter.in_flight(),
            0,
            "freed at end of stream, before the drop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_body_midway_frees_the_slot() {
        let layer = BackpressureLayer::builder("backpressure")
            .max_in_flight(1)
            .hold_until_body_end()
            .build()
            .unwrap();
        let limiter = layer.limiter().clone();
        let mut svc = layer.layer(service_fn(|_req: http::Request<()>| async {
            let (_tx, body) = channel();
            Ok::<_, BoxError>(http::Response::new(body))
        }));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await;
        assert_eq!(limiter.in_flight(), 1);
        drop(response);
        assert_eq!(limiter.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_it_the_slot_is_freed_with_the_response() {
        let layer = BackpressureLayer::new("backpressure", 1, 0).unwrap();
        let limiter = layer.limiter().clone();
        let mut svc = layer.layer(service_fn(|_req: http::Request<()>| async {
            let (_tx, body) = channel();
            Ok::<_, BoxError>(http::Response::new(body))
        }));
        let _response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await;
        assert_eq!(limiter.in_flight(), 0);
    }
}

/// Calls `svc` with the task's cooperative budget used up, in the same poll, and reports
/// whether the answer was an overload of either kind (backstop's or tower's `LoadShed`).
async fn call_with_budget_exhausted<S>(svc: &mut S, request: u64) -> bool
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let mut pending: Option<std::pin::Pin<Box<S::Future>>> = None;
    let result = std::future::poll_fn(|cx| {
        if let Some(fut) = pending.as_mut() {
            return fut.as_mut().poll(cx);
        }
        // Burn the budget: after this, every budget-aware tokio resource polled in this same
        // poll returns Pending.
        loop {
            let mut burn = pin!(tokio::task::consume_budget());
            if burn.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let mut fut = Box::pin(svc.call(request));
        let poll = fut.as_mut().poll(cx);
        pending = Some(fut);
        poll
    })
    .await;
    match result {
        Ok(_) => false,
        Err(e) => {
            find_overload(e.as_ref()).is_some() || e.is::<tower::load_shed::error::Overloaded>()
        }
    }
}

const TASKS: usize = 32;
const CALLS: usize = 200;

/// Runs TASKS tasks, each with at most one request outstanding, against a service whose limit
/// is TASKS: capacity is never used up, so every overload counted is a false one.
async fn false_overloads<S>(svc: S) -> usize
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let false_overloads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut svc = svc.clone();
        let count = false_overloads.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS {
                if call_with_budget_exhausted(&mut svc, (t * CALLS + i) as u64).await {
                    count.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    false_overloads.load(SeqCst)
}

fn quick_handler()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|x: u64| async move {
        // Some requests finish at once, some after a yield, to mix the interleavings.
        if x.is_multiple_of(3) {
            tokio::task::yield_now().await;
        }
        Ok::<_, BoxError>(x)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_false_overload_on_a_busy_multi_thread_runtime() {
    let layer = BackpressureLayer::new("backpressure", TASKS, 0).unwrap();
    let svc = layer.layer(quick_handler());
    assert_eq!(false_overloads(svc).await, 0);
    let stats = layer.limiter().stats();
    assert_eq!(stats.admitted, (TASKS * CALLS) as u64);
    assert_eq!((stats.rejected, stats.in_flight), (0, 0));
}

/// The control: the same harness catches tower's `Buffer` + `LoadShed` shedding with free
/// capacity, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_buffer_and_load_shed_do_shed_with_free_capacity() {
    let svc = ServiceBuilder::new()
        .map_err(BoxError::from)
        .load_shed()
        .buffer(TASKS * 4)
        .service(quick_handler());
    let n = false_overloads(svc).await;
    assert!(n > 0, "expected false overloads from Buffer + LoadShed");
}

/// One scripted request for the property tests.
#[derive(Debug, Clone)]
struct Script {
    arrive_ms: u64,
    work_ms: u64,
    cancel_after_ms: Option<u64>,
}

fn scripts() -> impl Strategy<Value = Vec<Script>> {
    prop::collection::vec(
        (0u64..200, 1u64..40, prop::option::weighted(0.3, 0u64..60)).prop_map(
            |(arrive_ms, work_ms, cancel_after_ms)| Script {
                arrive_ms,
                work_ms,
                cancel_after_ms,
            },
        ),
        1..60,
    )
}

#[derive(Debug, Default)]
struct Tally {
    served: usize,
    rejected: usize,
    cancelled: usize,
}

fn run_backpressure(limit: usize, queue: usize, script: Vec<Script>) -> (Tally, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let layer = BackpressureLayer::new("backpressure", limit, queue).unwrap();
        let limiter = layer.limiter().clone();
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(sleepy(peak.clone()));
        let mut tasks = Vec::new();
        for s in script {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                sleep(Duration::from_millis(s.arrive_ms)).await;
                let call = svc.ready().await.unwrap().call(s.work_ms);
                match s.cancel_after_ms {
                    Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), call).await {
                        Ok(r) => r.map(|_| true),
                        Err(_) => Ok(false),
                    },
                    None => call.await.map(|_| true),
                }
            }));
        }
        let mut tally = Tally::default();
        for t in tasks {
            match t.await.unwrap() {
                Ok(true) => tally.served += 1,
                Ok(false) => tally.cancelled += 1,
                Err(e) => {
                    assert_eq!(reason(&e), Some(OverloadReason::QueueFull));
                    tally.rejected += 1;
                }
            }
        }
        let stats = limiter.stats();
        assert_eq!((stats.in_flight, stats.waiting), (0, 0), "nothing left");
        assert!(peak.load(SeqCst) <= limit);
        assert_eq!(stats.rejected as usize, tally.rejected);
        // No leaked permit: the full limit can be taken at once again.
        let mut held = Vec::new();
        for _ in 0..limit {
            let mut f = Box::pin(svc.clone().call(1_000));
            assert!((&mut f).now_or_never().is_none());
            held.push(f);
        }
        assert_eq!(limiter.in_flight(), limit, "every permit came back");
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
        (tally, stats.offered() as usize)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_request_has_exactly_one_outcome_and_no_permit_leaks(
        limit in 1usize..5,
        queue in 0usize..6,
        script in scripts(),
    ) {
        let offered = script.len();
        let (tally, counted) = run_backpressure(limit, queue, script);
        prop_assert_eq!(tally.served + tally.rejected + tally.cancelled, offered);
        prop_assert_eq!(counted, offered);
    }
}

/// OS threads driving one limiter at once, so the lock-free path (admit with a compare-and-swap,
/// release with a decrement) races the locked one (a request starting to wait, a release
/// handing its slot to a waiter): every request gets exactly one outcome, the limit holds, no
/// waiter is forgotten (a lost hand-over would hang the run) and every permit comes back.
fn race_fast_and_slow_paths(threads: usize, limit: usize, queue: usize, calls: usize) {
    let layer = BackpressureLayer::new("backpressure_race", limit, queue).unwrap();
    let limiter = layer.limiter().clone();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = {
        let (now, peak) = (now.clone(), peak.clone());
        service_fn(move |x: u64| {
            let n = now.fetch_add(1, SeqCst) + 1;
            peak.fetch_max(n, SeqCst);
            // Hold the slot a little, sometimes across a reschedule, to widen the races.
            if x.is_multiple_of(4) {
                std::thread::yield_now();
            }
            now.fetch_sub(1, SeqCst);
            std::future::ready(Ok::<_, BoxError>(x))
        })
    };
    let svc = layer.layer(handler);
    let start = std::sync::Barrier::new(threads);
    let (served, rejected) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mut svc = svc.clone();
                let start = &start;
                s.spawn(move || {
                    let (mut served, mut rejected) = (0, 0);
                    start.wait();
                    for i in 0..calls {
                        let call = svc.call((t * calls + i) as u64);
                        match futures::executor::block_on(call) {
                            Ok(_) => served += 1,
                            Err(e) => {
                                assert_eq!(reason(&e), Some(OverloadReason::QueueFull));
                                rejected += 1;
                            }
                        }
                    }
                    (served, rejected)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    });
    assert_eq!(served + rejected, threads * calls, "one outcome each");
    assert!(peak.load(SeqCst) <= limit, "the limit held");
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0), "nothing left");
    assert_eq!(stats.admitted as usize, served);
    assert_eq!(stats.rejected as usize, rejected);
    if queue >= threads {
        assert_eq!(rejected, 0, "room for every thread to wait");
    }
    // The "someone waits" state did not outlive the waiters: a request is admitted at once,
    // without queueing.
    let queued = stats.queued;
    let answer = svc.clone().call(7).now_or_never();
    assert!(matches!(answer, Some(Ok(7))));
    let stats = limiter.stats();
    assert_eq!((stats.queued, stats.in_flight), (queued, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_lock_free_path_racing_the_locked_one_keeps_every_rule(
        threads in 2usize..5,
        limit in 1usize..4,
        queue in 0usize..6,
        calls in 500usize..2000,
    ) {
        race_fast_and_slow_paths(threads, limit, queue, calls);
    }
}

/// By criticality, a full line sheds its oldest lower-level waiter to admit a higher one (that
/// waiter gets `Shed`), serves the rest in arrival order, and refuses as before when nobody
/// lower waits. Without `by_criticality` tags are ignored.
#[tokio::test(start_paused = true)]
async fn a_full_line_by_criticality_evicts_a_lower_level_for_a_higher_one() {
    use backstop::context::{Criticality, HasCriticality};
    type Req = http::Request<u64>;
    fn tagged(c: Criticality, id: u64) -> Req {
        let mut req = Req::new(id);
        req.set_criticality(c);
        req
    }
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let served = served.clone();
        service_fn(move |req: Req| {
            served.lock().unwrap().push(*req.body());
            async { Ok::<_, BoxError>(()) }
        })
    };
    let layer = BackpressureLayer::builder("backpressure_by_level")
        .max_in_flight(1)
        .max_waiting(2)
        .by_criticality(Criticality::Sheddable)
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(handler);
    let running = svc.call(tagged(Criticality::Critical, 0));
    let sheddable_a = svc.call(Req::new(1)); // untagged: the layer's default, sheddable
    let sheddable_b = svc.call(tagged(Criticality::Sheddable, 2));
    assert_eq!(limiter.waiting(), 2);
    let critical_c = svc.call(tagged(Criticality::Critical, 3));
    assert_eq!(limiter.waiting(), 2, "C took A's place");
    assert_eq!(
        reason(&sheddable_a.await.unwrap_err()),
        Some(OverloadReason::Shed)
    );
    // Full, and nobody waits below a sheddable newcomer: refused at once.
    assert_eq!(
        reason(
            &svc.call(tagged(Criticality::Sheddable, 4))
                .await
                .unwrap_err()
        ),
        Some(OverloadReason::QueueFull)
    );
    running.await.unwrap();
    let (b, c) = tokio::join!(sheddable_b, critical_c);
    b.unwrap();
    c.unwrap();
    assert_eq!(
        *served.lock().unwrap(),
        vec![0, 2, 3],
        "arrival order within the line"
    );
    let stats = limiter.stats();
    assert_eq!((stats.shed, stats.rejected, stats.admitted), (1, 1, 3));
    assert_eq!(stats.offered(), 5, "one outcome each");

    // The same line without `by_criticality`: a critical newcomer is refused like any other.
    let layer = BackpressureLayer::new("backpressure_same_level", 1, 1).unwrap();
    let mut svc = layer.layer(service_fn(|_: Req| async { Ok::<_, BoxError>(()) }));
    let running = svc.call(tagged(Criticality::Sheddable, 0));
    let waiting = svc.call(tagged(Criticality::Sheddable, 1));
    let refused = svc.call(tagged(Criticality::CriticalPlus, 2)).await;
    assert_eq!(
        reason(&refused.unwrap_err()),
        Some(OverloadReason::QueueFull)
    );
    running.await.unwrap();
    waiting.await.unwrap();
}
