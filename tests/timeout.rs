//! Deadline propagation and the timeout layer, on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use backstop::BoxError;
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
async fn without_a_caller_deadline_the_layer_sets_its_own() {
    let mut svc = layer(250, 0.9).layer(service_fn(|req: Request<()>| async move {
        Ok::<_, BoxError>(req.deadline().map(|d| d.remaining()))
    }));
    let left = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(left, Some(Duration::from_millis(250)));
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
