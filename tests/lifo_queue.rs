//! LifoQueueLayer: FIFO while healthy, LIFO when behind, FIFO after draining; sheds by deadline
//! and by the CoDel bound without running the handler; sidelining; shared state; cancellation;
//! body permits; no false overloads on a busy runtime; and properties on paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use backstop::lifo_queue::{AdaptiveQueue, LifoQueueLayer};
use backstop::timeout::{Deadline, HasDeadline};
use backstop::{BoxError, OverloadReason, find_overload};
use futures::FutureExt;
use proptest::prelude::*;
use tokio::time::{Instant, sleep, sleep_until};
use tower::{Layer, Service, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn reason(err: &BoxError) -> Option<OverloadReason> {
    find_overload(err.as_ref()).map(|o| o.reason())
}

#[derive(Debug, Clone)]
struct Req {
    id: u64,
    work: Duration,
    deadline: Option<Deadline>,
}

impl Req {
    fn new(id: u64, work: Duration) -> Self {
        Req {
            id,
            work,
            deadline: None,
        }
    }
}

impl HasDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

/// What the handler saw: which request started, when, and whether the queue said it was behind.
#[derive(Debug, Clone, Copy)]
struct Start {
    id: u64,
    at: Instant,
    behind: bool,
}

type Log = Arc<Mutex<Vec<Start>>>;

/// A handler that logs each start (with the queue's own "behind" flag) and works `req.work`.
fn handler(
    queue: AdaptiveQueue,
    log: Log,
) -> impl Service<Req, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |req: Req| {
        log.lock().unwrap().push(Start {
            id: req.id,
            at: Instant::now(),
            behind: queue.is_behind(),
        });
        async move {
            sleep(req.work).await;
            Ok::<_, BoxError>(req.id)
        }
    })
}

type Svc = backstop::lifo_queue::LifoQueue<
    Box<dyn CloneService>,
    backstop::lifo_queue::UntilResponse,
    backstop::timeout::FromRequest,
>;

// A boxed clonable service keeps the test helpers' types short.
trait CloneService:
    Service<
        Req,
        Response = u64,
        Error = BoxError,
        Future = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>,
    > + Send
{
    fn clone_box(&self) -> Box<dyn CloneService>;
}

impl<T> CloneService for T
where
    T: Service<
            Req,
            Response = u64,
            Error = BoxError,
            Future = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>,
        > + Clone
        + Send
        + 'static,
{
    fn clone_box(&self) -> Box<dyn CloneService> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn CloneService> {
    fn clone(&self) -> Self {
        (**self).clone_box()
    }
}

fn build(layer: LifoQueueLayer) -> (Svc, AdaptiveQueue, Log) {
    let queue = layer.queue().clone();
    let log: Log = Arc::default();
    let inner = tower::util::MapFuture::new(handler(queue.clone(), log.clone()), |f| {
        Box::pin(f) as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
    });
    let boxed: Box<dyn CloneService> = Box::new(inner);
    (layer.layer(boxed), queue, log)
}

type BoxFuture = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

/// Boxes one call outside any async block: proving `Send` for the response future inside a
/// spawned async block trips a rustc limitation on higher-ranked lifetimes
/// ("implementation of `From` is not general enough").
fn call<S>(svc: &S, req: Req) -> BoxFuture
where
    S: Service<Req, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    Box::pin(svc.clone().oneshot(req))
}

/// Spawns `req` at `at` (absolute, from `t0`) and returns its outcome with the time it came.
fn spawn_at(
    svc: &Svc,
    t0: Instant,
    at: Duration,
    req: Req,
) -> tokio::task::JoinHandle<(u64, Result<u64, BoxError>, Instant)> {
    let svc = svc.clone();
    tokio::spawn(async move {
        sleep_until(t0 + at).await;
        let id = req.id;
        let result = call(&svc, req).await;
        (id, result, Instant::now())
    })
}

fn started(log: &Log) -> Vec<u64> {
    log.lock().unwrap().iter().map(|s| s.id).collect()
}

#[tokio::test(start_paused = true)]
async fn fifo_while_healthy() {
    let (svc, queue, log) = build(
        LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(1)
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    let mut calls = vec![spawn_at(&svc, t0, ms(0), Req::new(0, ms(30)))];
    for id in 1..4 {
        calls.push(spawn_at(&svc, t0, ms(id), Req::new(id, ms(10))));
    }
    for c in calls {
        assert!(c.await.unwrap().1.is_ok());
    }
    assert_eq!(started(&log), vec![0, 1, 2, 3]);
    assert!(log.lock().unwrap().iter().all(|s| !s.behind));
    assert_eq!(queue.stats().served_fifo, 3);
}

#[tokio::test(start_paused = true)]
async fn lifo_once_behind_sheds_the_stale_and_returns_to_fifo_after_draining() {
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .target(ms(50))
        .interval(ms(100))
        .build()
        .unwrap();
    let (svc, queue, log) = build(layer);
    let t0 = Instant::now();
    let mut calls = vec![spawn_at(&svc, t0, ms(0), Req::new(0, ms(115)))];
    // Waiters every 10 ms from 10 to 110 ms: the queue is non-empty from 10 ms, behind at 110.
    for id in (10..=110).step_by(10) {
        calls.push(spawn_at(&svc, t0, ms(id), Req::new(id, ms(1))));
    }
    // After the drain, a fresh burst is served in order again.
    calls.push(spawn_at(&svc, t0, ms(200), Req::new(200, ms(20))));
    calls.push(spawn_at(&svc, t0, ms(201), Req::new(201, ms(1))));
    calls.push(spawn_at(&svc, t0, ms(202), Req::new(202, ms(1))));

    let probe = tokio::spawn(async move {
        let q = |at| {
            let queue = queue.clone();
            async move {
                sleep_until(t0 + ms(at)).await;
                queue.is_behind()
            }
        };
        (q(105).await, q(112).await, q(150).await, q(201).await)
    });

    let mut shed = BTreeMap::new();
    for c in calls {
        let (id, result, at) = c.await.unwrap();
        if let Err(e) = result {
            assert_eq!(reason(&e), Some(OverloadReason::Shed));
            shed.insert(id, at - t0);
        }
    }
    // Waiters older than the 50 ms target when the queue turned behind (at 110 ms) were shed
    // right then; the rest were served newest first, then the queue drained and was FIFO again.
    let expected: BTreeMap<u64, Duration> = (10..=60).step_by(10).map(|id| (id, ms(110))).collect();
    assert_eq!(shed, expected);
    assert_eq!(started(&log), vec![0, 110, 100, 90, 80, 70, 200, 201, 202]);
    assert_eq!(probe.await.unwrap(), (false, true, false, false));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_waiter_is_shed_at_interval_without_running_the_handler() {
    let (svc, queue, log) = build(
        LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(1)
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    let running = spawn_at(&svc, t0, ms(0), Req::new(0, ms(500)));
    let waiter = spawn_at(&svc, t0, ms(1), Req::new(1, ms(1)));
    let (_, result, at) = waiter.await.unwrap();
    assert_eq!(reason(&result.unwrap_err()), Some(OverloadReason::Shed));
    assert_eq!(
        at - t0,
        ms(101),
        "the 100 ms interval bound, to the millisecond"
    );
    running.await.unwrap().1.unwrap();
    assert_eq!(started(&log), vec![0]);
    assert_eq!(queue.stats().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_deadline_is_shed_without_running_the_handler() {
    let (svc, queue, log) = build(
        LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(1)
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    let running = spawn_at(&svc, t0, ms(0), Req::new(0, ms(200)));
    let mut late = Req::new(1, ms(1));
    late.deadline = Some(Deadline::at(t0 + ms(30)));
    let waiter = spawn_at(&svc, t0, ms(1), late);
    let (_, result, at) = waiter.await.unwrap();
    assert_eq!(reason(&result.unwrap_err()), Some(OverloadReason::Shed));
    assert_eq!(at - t0, ms(30));

    // A request that must wait and is already past its deadline is shed at once.
    let mut expired = Req::new(2, ms(1));
    expired.deadline = Some(Deadline::at(t0 + ms(40)));
    let (_, result, at) = spawn_at(&svc, t0, ms(50), expired).await.unwrap();
    assert_eq!(reason(&result.unwrap_err()), Some(OverloadReason::Shed));
    assert_eq!(at - t0, ms(50));

    running.await.unwrap().1.unwrap();
    assert_eq!(started(&log), vec![0]);
    assert_eq!(queue.stats().shed, 2);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_just_as_a_slot_frees_is_still_not_run() {
    // The slot frees at 20 ms, the waiter's deadline is 20 ms: the grant checks the waiter
    // again, so the handler does not start for a caller that has gone.
    let (svc, _queue, log) = build(
        LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(1)
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    let running = spawn_at(&svc, t0, ms(0), Req::new(0, ms(20)));
    let mut req = Req::new(1, ms(1));
    req.deadline = Some(Deadline::at(t0 + ms(20)));
    let waiter = spawn_at(&svc, t0, ms(1), req);
    let (_, result, _) = waiter.await.unwrap();
    assert_eq!(reason(&result.unwrap_err()), Some(OverloadReason::Shed));
    running.await.unwrap().1.unwrap();
    assert_eq!(started(&log), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn sidelined_waiters_are_served_only_when_the_main_queue_is_empty() {
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .target(ms(10))
        .interval(ms(50))
        .sideline(ms(1_000))
        .build()
        .unwrap();
    let (svc, queue, log) = build(layer);
    let t0 = Instant::now();
    let mut calls = vec![spawn_at(&svc, t0, ms(0), Req::new(0, ms(100)))];
    calls.push(spawn_at(&svc, t0, ms(1), Req::new(1, ms(1))));
    calls.push(spawn_at(&svc, t0, ms(2), Req::new(2, ms(1))));
    // Behind at 51 ms: 1 and 2 are past the 10 ms target and move to the sideline.
    calls.push(spawn_at(&svc, t0, ms(95), Req::new(95, ms(1))));
    calls.push(spawn_at(&svc, t0, ms(96), Req::new(96, ms(1))));
    let probe = {
        let queue = queue.clone();
        tokio::spawn(async move {
            sleep_until(t0 + ms(60)).await;
            queue.stats()
        })
    };
    for c in calls {
        assert!(
            c.await.unwrap().1.is_ok(),
            "nobody shed: the sideline waits 1 s"
        );
    }
    let at_60 = probe.await.unwrap();
    assert_eq!((at_60.sidelined, at_60.moved_to_sideline), (2, 2));
    // Main queue first (FIFO: it has been non-empty only since 95 ms), then the sideline,
    // newest first.
    assert_eq!(started(&log), vec![0, 95, 96, 2, 1]);
    assert_eq!(queue.stats().served_sideline, 2);
}

#[tokio::test(start_paused = true)]
async fn a_sidelined_waiter_is_shed_at_its_total_bound() {
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .target(ms(10))
        .interval(ms(50))
        .sideline(ms(300))
        .build()
        .unwrap();
    let (svc, _queue, log) = build(layer);
    let t0 = Instant::now();
    let running = spawn_at(&svc, t0, ms(0), Req::new(0, ms(1_000)));
    let (_, result, at) = spawn_at(&svc, t0, ms(1), Req::new(1, ms(1))).await.unwrap();
    assert_eq!(reason(&result.unwrap_err()), Some(OverloadReason::Shed));
    assert_eq!(at - t0, ms(301));
    running.await.unwrap().1.unwrap();
    assert_eq!(started(&log), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn clones_and_sibling_services_share_one_queue() {
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .max_waiting(0)
        .ignore_deadlines()
        .build()
        .unwrap();
    let slow = service_fn(|ms: u64| async move {
        sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    });
    let mut a = layer.layer(slow);
    let mut b = a.clone();
    let mut c = layer.layer(slow);
    let running = tokio::spawn(a.ready().await.unwrap().call(100));
    tokio::task::yield_now().await;
    for svc in [&mut b, &mut c] {
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert_eq!(reason(&err), Some(OverloadReason::QueueFull));
    }
    running.await.unwrap().unwrap();
    assert_eq!(c.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(layer.queue().stats().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_at_once_wherever_it_stands() {
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .ignore_deadlines()
        .build()
        .unwrap();
    let queue = layer.queue().clone();
    let mut svc = layer.layer(service_fn(|ms: u64| async move {
        sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    }));
    let mut running = Box::pin(svc.ready().await.unwrap().call(50));
    assert!((&mut running).now_or_never().is_none());
    let mut waiters: Vec<_> = (0..5).map(|i| Box::pin(svc.call(i))).collect();
    for w in &mut waiters {
        assert!(w.now_or_never().is_none());
    }
    drop(waiters.remove(2)); // from the middle
    assert_eq!(queue.waiting(), 4);
    drop(waiters.remove(0)); // the head
    drop(waiters.pop()); // the tail
    assert_eq!(queue.waiting(), 2);
    assert_eq!(running.await.unwrap(), 50);
    // The two left are served in order.
    assert_eq!(waiters.remove(0).await.unwrap(), 1);
    assert_eq!(waiters.remove(0).await.unwrap(), 3);
    let stats = queue.stats();
    assert_eq!((stats.in_flight, stats.waiting, stats.cancelled), (0, 0, 3));
}

#[test]
fn invalid_configuration_is_rejected_with_the_field_named() {
    let field = |b: backstop::lifo_queue::LifoQueueLayerBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(LifoQueueLayer::builder("lifo_queue").max_in_flight(0)),
        "max_in_flight"
    );
    assert_eq!(
        field(LifoQueueLayer::builder("lifo_queue").interval(ms(0))),
        "interval"
    );
    assert_eq!(
        field(LifoQueueLayer::builder("lifo_queue").target(ms(0))),
        "target"
    );
    assert_eq!(
        field(
            LifoQueueLayer::builder("lifo_queue")
                .target(ms(200))
                .interval(ms(100))
        ),
        "target"
    );
    assert_eq!(
        field(
            LifoQueueLayer::builder("lifo_queue")
                .interval(ms(100))
                .sideline(ms(100))
        ),
        "sideline"
    );
    assert!(LifoQueueLayer::new("lifo_queue", 1).is_ok());
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_slot_is_held_until_the_body_ends_and_deadlines_come_from_extensions() {
    use http_body_util::{BodyExt, Full};
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .hold_until_body_end()
        .build()
        .unwrap();
    let queue = layer.queue().clone();
    let mut svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(Full::new(&b"body"[..])))
    }));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(queue.in_flight(), 1, "the body has not been sent yet");
    // A request with a deadline waits behind it and is shed when the deadline passes.
    let mut req = http::Request::new(());
    req.extensions_mut().insert(Deadline::after(ms(10)));
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(req));
    tokio::task::yield_now().await;
    assert_eq!(queue.waiting(), 1);
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(reason(&err), Some(OverloadReason::Shed));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"body");
    assert_eq!(queue.in_flight(), 0);
}

/// Calls `svc` with the task's cooperative budget used up, in the same poll; true if the
/// answer was an overload.
async fn call_with_budget_exhausted<S>(svc: &mut S, request: u64) -> bool
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let mut pending: Option<std::pin::Pin<Box<S::Future>>> = None;
    let result = std::future::poll_fn(|cx| {
        if let Some(fut) = pending.as_mut() {
            return fut.as_mut().poll(cx);
        }
        loop {
            let mut burn = pin!(tokio::task::consume_budget());
            if burn.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        if let Poll::Ready(Err(e)) = svc.poll_ready(cx) {
            return Poll::Ready(Err(e));
        }
        let mut fut = Box::pin(svc.call(request));
        let poll = fut.as_mut().poll(cx);
        pending = Some(fut);
        poll
    })
    .await;
    result.is_err_and(|e| find_overload(e.as_ref()).is_some())
}

/// Runs `tasks` tasks of `calls` sequential calls each, all with the budget used up.
async fn false_overloads<S>(svc: S, tasks: usize, calls: usize) -> usize
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let overloads = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut svc = svc.clone();
        let overloads = overloads.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..calls {
                if call_with_budget_exhausted(&mut svc, (t * calls + i) as u64).await {
                    overloads.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    overloads.load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_false_overload_on_a_busy_multi_thread_runtime() {
    const TASKS: usize = 32;
    const CALLS: usize = 200;
    // Half the limit in tasks, and a queue of 0: any overload would be a false one.
    let layer = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(TASKS)
        .max_waiting(0)
        .ignore_deadlines()
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|x: u64| async move {
        if x.is_multiple_of(3) {
            tokio::task::yield_now().await;
        }
        Ok::<_, BoxError>(x)
    }));
    assert_eq!(false_overloads(svc, TASKS, CALLS).await, 0);
    let stats = layer.queue().stats();
    assert_eq!(stats.admitted, (TASKS * CALLS) as u64);
    assert_eq!((stats.rejected, stats.shed, stats.in_flight), (0, 0, 0));
}

// ---- properties -------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
struct Script {
    arrive_ms: u64,
    work_ms: u64,
    deadline_ms: Option<u64>,
    cancel_after_ms: Option<u64>,
}

fn scripts() -> impl Strategy<Value = Vec<Script>> {
    prop::collection::vec(
        (
            0u64..300,
            1u64..30,
            prop::option::weighted(0.3, 0u64..80),
            prop::option::weighted(0.2, 0u64..80),
        )
            .prop_map(
                |(arrive_ms, work_ms, deadline_ms, cancel_after_ms)| Script {
                    arrive_ms,
                    work_ms,
                    deadline_ms,
                    cancel_after_ms,
                },
            ),
        1..80,
    )
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    served: u64,
    shed: u64,
    rejected: u64,
    cancelled: u64,
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64, failure_persistence: None, ..ProptestConfig::default()
    })]

    /// offered = served + shed + rejected (+ cancelled by the caller), nothing is left waiting,
    /// no handler runs past its request's deadline, and every permit comes back.
    #[test]
    fn every_request_has_one_outcome_and_cancellation_leaks_no_permit(
        limit in 1usize..4,
        max_waiting in 0usize..12,
        interval_ms in 5u64..120,
        target_pct in 1u64..=100,
        sideline in prop::option::of(121u64..400),
        script in scripts(),
    ) {
        let offered = script.len() as u64;
        let target = Duration::from_micros(interval_ms * 10 * target_pct);
        let (tally, stats, late_starts, peak) = runtime().block_on(async move {
            let mut builder = LifoQueueLayer::builder("lifo_queue")
                .max_in_flight(limit)
                .max_waiting(max_waiting)
                .interval(ms(interval_ms))
                .target(target);
            if let Some(s) = sideline {
                builder = builder.sideline(ms(s));
            }
            let (svc, queue, log) = build(builder.build().unwrap());
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            let mut deadlines = BTreeMap::new();
            for (id, s) in script.iter().enumerate() {
                let mut req = Req::new(id as u64, ms(s.work_ms));
                if let Some(d) = s.deadline_ms {
                    let at = t0 + ms(s.arrive_ms + d);
                    req.deadline = Some(Deadline::at(at));
                    deadlines.insert(id as u64, at);
                }
                let svc = svc.clone();
                let (arrive, cancel) = (s.arrive_ms, s.cancel_after_ms);
                tasks.push(tokio::spawn(async move {
                    sleep_until(t0 + ms(arrive)).await;
                    let call = call(&svc, req);
                    match cancel {
                        Some(c) => tokio::time::timeout(ms(c), call).await.ok(),
                        None => Some(call.await),
                    }
                }));
            }
            let mut tally = Tally::default();
            for t in tasks {
                match t.await.unwrap() {
                    None => tally.cancelled += 1,
                    Some(Ok(_)) => tally.served += 1,
                    Some(Err(e)) => match reason(&e) {
                        Some(OverloadReason::Shed) => tally.shed += 1,
                        Some(OverloadReason::QueueFull) => tally.rejected += 1,
                        other => panic!("unexpected outcome {other:?}: {e}"),
                    },
                }
            }
            let starts = log.lock().unwrap().clone();
            let late_starts = starts
                .iter()
                .filter(|s| deadlines.get(&s.id).is_some_and(|d| s.at >= *d && s.at > t0 + ms(script[s.id as usize].arrive_ms)))
                .count();
            // Concurrency never passed the limit: replay starts and ends.
            let mut events: Vec<(Instant, i64)> = Vec::new();
            for s in &starts {
                events.push((s.at, 1));
                // A handler ends when its work is done or its caller cancels, whichever is first.
                let sc = &script[s.id as usize];
                let mut end = s.at + ms(sc.work_ms);
                if let Some(c) = sc.cancel_after_ms {
                    end = end.min(t0 + ms(sc.arrive_ms + c));
                }
                events.push((end, -1));
            }
            events.sort();
            let (mut now, mut peak) = (0i64, 0i64);
            for (_, d) in events {
                now += d;
                peak = peak.max(now);
            }
            let stats = queue.stats();
            // No leaked permit: the whole limit can be taken again at once.
            let mut held = Vec::new();
            for i in 0..limit {
                let mut f = Box::pin(svc.clone().call(Req::new(10_000 + i as u64, ms(1_000))));
                assert!((&mut f).now_or_never().is_none());
                held.push(f);
            }
            assert_eq!(queue.in_flight(), limit, "every permit came back");
            drop(held);
            assert_eq!(queue.in_flight(), 0);
            (tally, stats, late_starts, peak as usize)
        });
        prop_assert_eq!(tally.served + tally.shed + tally.rejected + tally.cancelled, offered);
        prop_assert_eq!((stats.waiting, stats.in_flight), (0, 0), "nothing left waiting");
        prop_assert_eq!(stats.offered(), offered);
        prop_assert_eq!(stats.rejected, tally.rejected);
        prop_assert!(stats.shed >= tally.shed);
        prop_assert_eq!(late_starts, 0, "a handler ran for a waiter past its deadline");
        prop_assert!(peak <= limit);
    }

    /// The order served is LIFO exactly when the queue says it is behind: each request granted
    /// a slot from the queue is the newest eligible waiter when the handler sees
    /// `is_behind() == true`, and the oldest when it sees false.
    #[test]
    fn the_order_served_is_lifo_exactly_when_the_layer_says_it_is_behind(
        limit in 1usize..4,
        interval_ms in 5u64..80,
        target_pct in 1u64..=100,
        arrivals in prop::collection::btree_set(0u64..400, 2..80),
        works in prop::collection::vec(1u64..25, 80),
    ) {
        // Arrivals fall on whole milliseconds and work lasts whole milliseconds plus 1 µs, so
        // slots free (and waiters are granted) only at instants when nobody arrives and no
        // CoDel timer fires: the waiting set at each grant is exactly known.
        let target = Duration::from_micros(interval_ms * 10 * target_pct);
        let arrivals: Vec<u64> = arrivals.into_iter().collect();
        let (starts, sheds, t0, served_lifo) = runtime().block_on({
            let arrivals = arrivals.clone();
            let works = works.clone();
            async move {
                let layer = LifoQueueLayer::builder("lifo_queue")
                    .max_in_flight(limit)
                    .max_waiting(10_000)
                    .interval(ms(interval_ms))
                    .target(target)
                    .build()
                    .unwrap();
                let (svc, queue, log) = build(layer);
                let t0 = Instant::now();
                let calls: Vec<_> = arrivals
                    .iter()
                    .enumerate()
                    .map(|(id, &a)| {
                        let work = ms(works[id]) + Duration::from_micros(1);
                        spawn_at(&svc, t0, ms(a), Req::new(id as u64, work))
                    })
                    .collect();
                let mut sheds = BTreeMap::new();
                for c in calls {
                    let (id, result, at) = c.await.unwrap();
                    if let Err(e) = result {
                        assert_eq!(reason(&e), Some(OverloadReason::Shed));
                        sheds.insert(id, at);
                    }
                }
                let starts = log.lock().unwrap().clone();
                (starts, sheds, t0, queue.stats().served_lifo)
            }
        });
        let arrive = |id: u64| t0 + ms(arrivals[id as usize]);
        let start_of: BTreeMap<u64, Instant> = starts.iter().map(|s| (s.id, s.at)).collect();
        let mut groups: BTreeMap<Instant, Vec<Start>> = BTreeMap::new();
        for s in &starts {
            if s.at > arrive(s.id) {
                groups.entry(s.at).or_default().push(*s); // granted from the queue
            }
        }
        let mut lifo_grants = 0;
        for (t, group) in groups {
            // Waiting just before t, and not shed at t.
            let eligible: BTreeSet<u64> = (0..arrivals.len() as u64)
                .filter(|&id| arrive(id) < t)
                .filter(|id| start_of.get(id).is_none_or(|&s| s >= t && s > arrive(*id)))
                .filter(|id| sheds.get(id).is_none_or(|&s| s > t))
                .collect();
            let granted: BTreeSet<u64> = group.iter().map(|s| s.id).collect();
            prop_assert!(granted.is_subset(&eligible), "granted {granted:?} not among {eligible:?}");
            if granted == eligible {
                continue; // everyone waiting was served: any order fits
            }
            let behind: BTreeSet<bool> = group.iter().map(|s| s.behind).collect();
            prop_assert_eq!(behind.len(), 1, "mixed flags at one instant with waiters left");
            let ordered: Vec<u64> = eligible.iter().copied().collect(); // ids follow arrival order
            let expected: BTreeSet<u64> = if behind.contains(&true) {
                lifo_grants += 1;
                ordered.iter().rev().take(granted.len()).copied().collect()
            } else {
                ordered.iter().take(granted.len()).copied().collect()
            };
            prop_assert_eq!(granted, expected);
        }
        prop_assert!(served_lifo >= lifo_grants);
    }
}

// ---- the scenario on the simulation harness, shortened ------------------------------

#[cfg(feature = "sim")]
mod simulation {
    use super::*;
    use backstop::backpressure::BackpressureLayer;
    use backstop::sim::{
        CallPolicy, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario, SimReport, SimServer,
        SimService, WebApp,
    };

    const SURGE: Duration = Duration::from_secs(15);

    /// 10 workers × 100 ms = 100 requests/s; callers give up on an attempt after 1 s and retry
    /// once; 0.5x for 5 s, `factor`x for 15 s, 0.5x for 15 s.
    fn run(name: &str, factor: f64, stack: fn(SimServer) -> SimService) -> SimReport {
        let s = Duration::from_secs;
        Scenario::builder(name)
            .seed(7)
            .profile(
                LoadProfile::new()
                    .step(s(5), 50.0)
                    .step(SURGE, 100.0 * factor)
                    .step(s(15), 50.0),
            )
            .clients(ClientBehavior {
                clients: 100,
                patience: s(2),
                call: CallPolicy {
                    attempt_timeout: Some(s(1)),
                    retry: RetryPolicy::Naive {
                        retries: 1,
                        backoff: Duration::ZERO,
                        jitter: 0.0,
                    },
                },
                ..ClientBehavior::default()
            })
            .surge(s(5), s(5) + SURGE)
            .hop(Hop::new("web", 10, WebApp::service_time()).stack(stack))
            .build()
            .unwrap()
            .run()
    }

    fn fifo(server: SimServer) -> SimService {
        SimService::new(server)
    }

    fn lifo(server: SimServer) -> SimService {
        let layer = LifoQueueLayer::builder("lifo_queue")
            .max_in_flight(10)
            .build()
            .unwrap();
        SimService::new(layer.layer(server))
    }

    fn bounded(server: SimServer) -> SimService {
        let layer = BackpressureLayer::new("backpressure", 10, 20).unwrap();
        SimService::new(layer.layer(server))
    }

    /// The first second after the surge whose median latency is within 2x the unloaded one.
    fn p50_normal_after(report: &SimReport) -> Option<Duration> {
        let end = Duration::from_secs(5) + SURGE;
        report
            .series
            .iter()
            .filter(|b| b.start >= end)
            .find(|b| b.p50.is_some_and(|p| p <= report.unloaded_latency * 2))
            .map(|b| b.start - end)
    }

    #[test]
    fn at_5x_lifo_keeps_goodput_and_recovers_at_once_where_fifo_collapses() {
        let fifo = run("fifo", 5.0, fifo);
        let lifo = run("lifo", 5.0, lifo);
        assert!(
            fifo.summary.surge_goodput_fraction < 0.2,
            "baseline collapses: {}",
            fifo.summary.surge_goodput_fraction
        );
        assert!(!fifo.summary.recovery.recovered());
        assert!(
            lifo.summary.surge_goodput_fraction >= 0.9,
            "lifo goodput {}",
            lifo.summary.surge_goodput_fraction
        );
        assert!(p50_normal_after(&lifo).is_some_and(|d| d <= Duration::from_secs(1)));
        assert!(
            lifo.summary
                .recovery
                .seconds()
                .is_some_and(|s| lifo.summary.recovery.recovered() && s <= 1.0)
        );
    }

    #[test]
    fn at_2x_lifo_and_backpressure_keep_goodput() {
        let lifo = run("lifo", 2.0, lifo);
        let bounded = run("backpressure", 2.0, bounded);
        assert!(lifo.summary.surge_goodput_fraction >= 0.9);
        assert!(bounded.summary.surge_goodput_fraction >= 0.9);
        assert!(p50_normal_after(&lifo).is_some_and(|d| d <= Duration::from_secs(1)));
    }
}
