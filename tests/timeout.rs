//! Deadline propagation and the timeout layer, on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use backstop::BoxError;
use backstop::context::{self, Criticality, RequestContext};
use backstop::timeout::{Deadline, Elapsed, ElapsedCause, HasDeadline, TimeoutLayer, WithDeadline};
use http::Request;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

fn layer(timeout_ms: u64, fraction: f64) -> TimeoutLayer {
    TimeoutLayer::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .fraction(fraction)
        .build()
        .unwrap()
}

fn elapsed(err: &BoxError) -> Elapsed {
    *err.downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("expected Elapsed, got {err}"))
}

/// Records the remaining budget each level of the stack sees.
fn probe<S>(
    seen: Arc<std::sync::Mutex<Vec<Duration>>>,
    inner: S,
) -> impl Service<Request<()>, Response = S::Response, Error = S::Error, Future = S::Future>
where
    S: Service<Request<()>>,
{
    tower::util::MapRequest::new(inner, move |req: Request<()>| {
        seen.lock()
            .unwrap()
            .push(req.deadline().unwrap().remaining());
        req
    })
}

#[tokio::test(start_paused = true)]
async fn the_deadline_shrinks_layer_by_layer() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let leaf = service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) });
    // Outer to inner: 10 s own timeouts, each giving half of what it has to the next.
    let l3 = layer(10_000, 0.5).layer(probe(seen.clone(), leaf));
    let l2 = layer(10_000, 0.5).layer(probe(seen.clone(), l3));
    let mut l1 = layer(10_000, 0.5).layer(probe(seen.clone(), l2));

    let mut req = Request::new(());
    req.set_deadline(Deadline::after(Duration::from_secs(8)));
    l1.ready().await.unwrap().call(req).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            Duration::from_secs(4),
            Duration::from_secs(2),
            Duration::from_secs(1)
        ],
        "each layer gives the next half of its remaining time"
    );
}

#[tokio::test(start_paused = true)]
async fn the_tighter_of_own_timeout_and_caller_deadline_wins_and_is_named() {
    let slow = service_fn(|_req: Request<()>| async {
        sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    });
    let mut svc = layer(300, 0.9).layer(slow);

    // The caller has 1 s: 0.9 s > 300 ms, so the layer's own timeout binds.
    let mut req = Request::new(());
    req.set_deadline(Deadline::after(Duration::from_secs(1)));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(elapsed(&err).cause(), ElapsedCause::OwnTimeout);

    // The caller has 200 ms: 180 ms < 300 ms, so the caller's deadline binds.
    let mut req = Request::new(());
    req.set_deadline(Deadline::after(Duration::from_millis(200)));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(180));
    assert_eq!(elapsed(&err).cause(), ElapsedCause::CallerDeadline);
    assert_eq!(elapsed(&err).budget(), Duration::from_millis(180));
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_never_reaches_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut svc = layer(1_000, 1.0).layer(service_fn(move |_req: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    }));

    let mut req = Request::new(());
    req.set_deadline(Deadline::after(Duration::from_millis(50)));
    advance(Duration::from_millis(50)).await;
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    let e = elapsed(&err);
    assert_eq!(e.cause(), ElapsedCause::CallerDeadline);
    assert_eq!(e.budget(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(backstop::is_timeout(err.as_ref()));
}

#[tokio::test(start_paused = true)]
async fn a_plain_request_in_with_deadline_gets_the_same_treatment() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut svc = layer(1_000, 0.5).layer(service_fn(move |req: WithDeadline<u32>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>((*req, req.deadline().map(Deadline::remaining))) }
    }));

    // A caller's deadline is read and shrunk by the fraction, like an http::Request's.
    let mut req = WithDeadline::new(7);
    req.set_deadline(Deadline::after(Duration::from_millis(400)));
    let (value, left) = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!((value, left), (7, Some(Duration::from_millis(200))));

    // An expired one fails before the inner service.
    let mut req = WithDeadline::from(8);
    req.set_deadline(Deadline::after(Duration::from_millis(50)));
    advance(Duration::from_millis(50)).await;
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(elapsed(&err).cause(), ElapsedCause::CallerDeadline);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_caller_deadline_the_layer_hands_its_own_down_in_the_scope() {
    // What the inner service sees: in the request, in the scope at `call`, in the scope when
    // its future runs.
    let inner = tower::service_fn(|req: Request<()>| {
        let in_request = req.deadline().map(Deadline::remaining);
        let at_call = context::current_deadline().map(Deadline::remaining);
        async move {
            let at_poll = context::current_deadline().map(Deadline::remaining);
            Ok::<_, BoxError>((in_request, at_call, at_poll))
        }
    });
    let mut svc = layer(250, 0.9).layer(inner);
    let seen = svc.ready().await.unwrap().call(Request::new(())).await;
    let left = Some(Duration::from_millis(250));
    assert_eq!(
        seen.unwrap(),
        (None, left, left),
        "request untouched, scope set"
    );
    assert_eq!(
        context::current_deadline(),
        None,
        "the scope ends with the call"
    );

    // Opted in, the request carries it and no scope is needed.
    let always = TimeoutLayer::builder()
        .timeout(Duration::from_millis(250))
        .always_write_deadline()
        .build()
        .unwrap();
    assert!(always.always_writes_deadline());
    let mut svc = always.layer(inner);
    let seen = svc.ready().await.unwrap().call(Request::new(())).await;
    assert_eq!(seen.unwrap(), (left, None, None));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_can_hold_a_deadline_for_free_gets_it_written() {
    let mut svc = layer(250, 0.9).layer(service_fn(|req: WithDeadline<()>| async move {
        Ok::<_, BoxError>((
            req.deadline().map(Deadline::remaining),
            context::current_deadline(),
        ))
    }));
    let seen = svc.ready().await.unwrap().call(WithDeadline::new(())).await;
    assert_eq!(seen.unwrap(), (Some(Duration::from_millis(250)), None));
}

#[tokio::test(start_paused = true)]
async fn a_request_deadline_is_tightened_in_place_and_wins_over_the_scope() {
    let mut svc = layer(10_000, 0.5).layer(service_fn(|req: Request<()>| async move {
        Ok::<_, BoxError>((
            req.deadline().map(Deadline::remaining),
            req.extensions().len(),
        ))
    }));
    let mut req = Request::new(());
    req.set_deadline(Deadline::after(Duration::from_millis(400)));
    // A scope with less time: the request's own deadline still wins (a caller that set one
    // means it), and it stays one entry, overwritten.
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(100)));
    let seen = scope
        .scope(async { svc.ready().await.unwrap().call(req).await })
        .await;
    assert_eq!(seen.unwrap(), (Some(Duration::from_millis(200)), 1));
}

#[tokio::test(start_paused = true)]
async fn nested_timeouts_shrink_the_scope_and_an_outer_scope_is_kept() {
    // Outer scope 8 s, then three layers giving half each: 4, 2, 1 s, all through the scope.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let leaf = service_fn(move |req: Request<()>| {
        assert!(req.deadline().is_none(), "the request is never written");
        record
            .lock()
            .unwrap()
            .push(context::current_deadline().unwrap().remaining());
        async { Ok::<_, BoxError>(context::current().criticality()) }
    });
    let mut svc =
        layer(10_000, 0.5).layer(layer(10_000, 0.5).layer(layer(10_000, 0.5).layer(leaf)));
    let outer = RequestContext::new()
        .with_deadline(Deadline::after(Duration::from_secs(8)))
        .with_criticality(Criticality::Sheddable);
    let criticality = outer
        .scope(async { svc.ready().await.unwrap().call(Request::new(())).await })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Duration::from_secs(1)]);
    assert_eq!(
        criticality,
        Some(Criticality::Sheddable),
        "the scope keeps its criticality"
    );
}

/// Records what the service below a `Buffer` sees: the deadline at `call` (on the buffer's
/// worker task) and when its future is polled (on the caller's task).
#[derive(Clone)]
struct SeenBelow;

impl Service<Request<()>> for SeenBelow {
    type Response = (Option<Duration>, Option<Duration>);
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let at_call = context::effective_deadline(&req).map(Deadline::remaining);
        Box::pin(async move {
            let at_poll = context::effective_deadline(&req).map(Deadline::remaining);
            Ok((at_call, at_poll))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_buffer_below_the_timeout_needs_the_opt_in_to_pass_the_deadline_at_call() {
    let left = Some(Duration::from_millis(250));
    let buffered = || tower::buffer::Buffer::new(SeenBelow, 8);

    // Default: the worker task calls the service outside the caller's scope, so `call` sees
    // nothing; the future it hands back is polled by the caller, in the scope.
    let mut svc = layer(250, 0.9).layer(buffered());
    let seen = svc.ready().await.unwrap().call(Request::new(())).await;
    assert_eq!(seen.unwrap(), (None, left));

    // Opted in: the request carries the deadline across the task hop.
    let always = TimeoutLayer::builder()
        .timeout(Duration::from_millis(250))
        .always_write_deadline()
        .build()
        .unwrap();
    let mut svc = always.layer(buffered());
    let seen = svc.ready().await.unwrap().call(Request::new(())).await;
    assert_eq!(seen.unwrap(), (left, left));
}

#[tokio::test(start_paused = true)]
async fn send_deadline_writes_the_timeouts_deadline_from_the_scope() {
    let mut svc = ServiceBuilder::new()
        .layer(layer(250, 0.9))
        .map_request(backstop::timeout::headers::send_deadline::<()>)
        .service_fn(|req: Request<()>| async move {
            Ok::<_, BoxError>((
                req.headers()
                    .get(backstop::timeout::headers::TIMEOUT_MS_HEADER)
                    .cloned(),
                req.extensions().len(),
            ))
        });
    let (header, extensions) = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(header.unwrap(), "250");
    assert_eq!(extensions, 0, "the request itself is left untouched");
}

#[tokio::test(start_paused = true)]
async fn a_lifo_queue_below_sheds_a_waiter_at_the_timeouts_deadline() {
    use backstop::lifo_queue::LifoQueueLayer;
    let queue_layer = LifoQueueLayer::builder("timeout_lifo")
        .max_in_flight(1)
        .build()
        .unwrap();
    let queue = queue_layer.queue().clone();
    let stuck = service_fn(|_req: Request<()>| async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let below = queue_layer.layer(stuck);
    // One request holds the only slot, outside any timeout.
    let mut first = below.clone();
    let holder = tokio::spawn(async move { first.ready().await?.call(Request::new(())).await });
    tokio::task::yield_now().await;
    assert_eq!(queue.in_flight(), 1);

    // The next waits in the queue; the queue knows its 30 ms only through the timeout's scope.
    let mut svc = layer(30, 1.0).layer(below);
    let (took, result) = timed_call(&mut svc).await;
    let err = result.unwrap_err();
    assert_eq!(took, Duration::from_millis(30));
    assert_eq!(
        queue.stats().shed,
        1,
        "shed by the queue at the deadline: {err}"
    );
    holder.abort();
}

/// Sends one plain request once the service is ready; returns how long it took and the result.
async fn timed_call<S>(svc: &mut S) -> (Duration, Result<S::Response, S::Error>)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let result = match svc.ready().await {
        Ok(svc) => svc.call(Request::new(())).await,
        Err(e) => Err(e),
    };
    (start.elapsed(), result)
}

impl ReadyAt {
    fn new(ready_in: Duration, work: Duration, calls: &Arc<AtomicUsize>) -> Self {
        ReadyAt {
            at: Instant::now() + ready_in,
            work,
            calls: calls.clone(),
        }
    }
}

/// A service that is not ready until a set instant, then answers after `work`.
#[derive(Clone)]
struct ReadyAt {
    at: Instant,
    work: Duration,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<()>> for ReadyAt {
    type Response = ();
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if Instant::now() >= self.at {
            Poll::Ready(Ok(()))
        } else {
            let waker = cx.waker().clone();
            let at = self.at;
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                waker.wake();
            });
            Poll::Pending
        }
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let work = self.work;
        Box::pin(async move {
            sleep(work).await;
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_readiness_counts_against_the_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Ready after 300 ms, then 300 ms of work: 600 ms in all against a 500 ms timeout.
    let inner = ReadyAt::new(
        Duration::from_millis(300),
        Duration::from_millis(300),
        &calls,
    );
    let mut svc = layer(500, 1.0).layer(inner);
    let (took, result) = timed_call(&mut svc).await;
    let err = result.unwrap_err();
    assert_eq!(took, Duration::from_millis(500));
    assert_eq!(elapsed(&err).cause(), ElapsedCause::OwnTimeout);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // tower's Timeout starts its clock in `call`, so the same request succeeds after 600 ms.
    let inner = ReadyAt::new(
        Duration::from_millis(300),
        Duration::from_millis(300),
        &calls,
    );
    let mut tower_svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(500))
        .service(inner);
    let (took, result) = timed_call(&mut tower_svc).await;
    result.unwrap();
    assert_eq!(took, Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn a_service_that_never_becomes_ready_times_out_without_being_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = ReadyAt::new(Duration::from_secs(3600), Duration::ZERO, &calls);
    let mut svc = layer(200, 1.0).layer(inner);
    let (took, result) = timed_call(&mut svc).await;
    let err = result.unwrap_err();
    assert_eq!(took, Duration::from_millis(200));
    assert_eq!(elapsed(&err).cause(), ElapsedCause::OwnTimeout);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The service is usable again afterwards: the next request gets its own full budget.
    let (took, result) = timed_call(&mut svc).await;
    let err = result.unwrap_err();
    assert_eq!(took, Duration::from_millis(200));
    assert!(err.is::<Elapsed>());
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    let mut svc = layer(100, 1.0).layer(service_fn(|_req: Request<()>| async {
        Err::<(), _>(std::io::Error::other("boom"))
    }));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert!(!err.is::<Elapsed>());
}

#[test]
fn invalid_configs_name_the_field() {
    let zero = TimeoutLayer::builder()
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(zero.field(), "timeout");
    for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
        let err = TimeoutLayer::builder().fraction(bad).build().unwrap_err();
        assert_eq!(err.field(), "fraction", "{bad}");
        assert!(err.to_string().contains("(0, 1]"));
    }
    assert!(TimeoutLayer::builder().fraction(1.0).build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_retry_below_reads_the_time_left_from_the_timeouts_scope() {
    use backstop::classify::HttpClassifier;
    use backstop::retry::{Idempotent, RetryBudget, RetryLayer};
    let sends = Arc::new(AtomicUsize::new(0));
    let counted = sends.clone();
    // Every attempt takes 95 ms and fails with a retryable 500.
    let failing = service_fn(move |_req: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            sleep(Duration::from_millis(95)).await;
            let res = http::Response::builder().status(500).body(()).unwrap();
            Ok::<_, BoxError>(res)
        }
    });
    let budget = RetryBudget::builder("timeout_retry")
        .min_per_second(0.0)
        .initial_tokens(5.0)
        .build()
        .unwrap();
    let retry = RetryLayer::builder(budget)
        .classifier(HttpClassifier)
        .min_time_left(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer(100, 1.0))
        .layer(retry)
        .service(failing);
    let mut req = Request::new(());
    req.extensions_mut().insert(Idempotent);
    // 5 ms are left after the first attempt, under the retry's 10 ms minimum: the first answer
    // comes back at once rather than a retry that the timeout would cut off.
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_readme_client_stack_sends_the_per_attempt_deadline_without_writing_the_request() {
    use backstop::hedge::HedgeLayer;
    use backstop::retry::{Idempotent, RetryBudget, RetryLayer};
    use backstop::timeout::headers::{TIMEOUT_MS_HEADER, send_deadline};
    use backstop::token_bucket::{TokenBucket, TokenBucketLayer};
    // The transport answers with the header it was sent and whether the request carried a
    // `Deadline` of its own.
    let transport = service_fn(|req: Request<()>| async move {
        let header = req.headers().get(TIMEOUT_MS_HEADER).cloned();
        Ok::<_, BoxError>((header, req.deadline().is_some()))
    });
    let name = "timeout_readme_stack";
    let bucket = TokenBucket::builder(name).build().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .layer(
            RetryLayer::builder(RetryBudget::builder(name).build().unwrap())
                .build()
                .unwrap(),
        )
        .layer(HedgeLayer::builder(name).build().unwrap())
        .layer(TokenBucketLayer::builder(bucket).build().unwrap())
        .layer(layer(800, 0.5))
        .map_request(send_deadline::<()>)
        .service(transport);
    let mut req = Request::new(());
    req.extensions_mut().insert(Idempotent);
    let (header, in_request) = client.ready().await.unwrap().call(req).await.unwrap();
    // min(800 ms, 0.5 × 2 s): the inner timeout read the outer one's scope through the retry,
    // the hedge and the bucket.
    assert_eq!(header.unwrap(), "800");
    assert!(!in_request);

    // Inside a handler's scope with 1 s left: 0.9 s overall, then min(800, 0.45 s) per attempt.
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_secs(1)));
    let mut req = Request::new(());
    req.extensions_mut().insert(Idempotent);
    let (header, _) = scope
        .scope(async { client.ready().await.unwrap().call(req).await })
        .await
        .unwrap();
    assert_eq!(header.unwrap(), "450");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_token_bucket_below_gives_up_at_the_timeouts_deadline() {
    use backstop::token_bucket::{TokenBucket, TokenBucketLayer};
    use backstop::{OverloadReason, Overloaded};
    // Empty, one token a second: a request would wait 1 s, and the bucket's own patience is
    // 10 s; only the timeout's 100 ms, read from its scope, makes it leave the line sooner.
    let bucket = TokenBucket::builder("timeout_bucket_wait")
        .capacity(1.0)
        .rate(1.0)
        .initial_tokens(0.0)
        .build()
        .unwrap();
    let waiting = TokenBucketLayer::builder(bucket)
        .wait_up_to(Duration::from_secs(10))
        .wait_until_deadline()
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer(100, 0.9))
        .layer(waiting)
        .service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) });
    let (took, result) = timed_call(&mut svc).await;
    let err = result.unwrap_err();
    assert_eq!(took, Duration::from_millis(100));
    // The bucket's refusal, not the timeout's `Elapsed`: it knew the deadline and left first.
    let refusal = err
        .downcast_ref::<Overloaded>()
        .unwrap_or_else(|| panic!("expected the bucket's refusal, got {err}"));
    assert_eq!(refusal.reason(), OverloadReason::RateLimited);
}
