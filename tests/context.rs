//! The request context scope: a handler's calls inherit the deadline of the request it serves.

use std::time::Duration;

use backstop::context::{self, Criticality, RequestContext, ScopeLayer};
use backstop::timeout::headers::{TIMEOUT_MS_HEADER, send_deadline};
use backstop::timeout::{Deadline, ElapsedCause, HasDeadline, TimeoutLayer};
use backstop::{BoxError, is_timeout};
use tower::{Service, ServiceBuilder, ServiceExt};

type Req = http::Request<()>;

/// A client stack (5 s overall, 90% of the caller's time) over a transport that reports the
/// deadline its request arrived with.
fn client()
-> impl Service<Req, Response = Option<Duration>, Error = BoxError, Future: Send> + Clone + Send {
    ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service_fn(|req: Req| async move {
            // The request, else the scope the timeout hands its deadline down in.
            Ok::<_, BoxError>(context::effective_deadline(&req).map(|d| d.remaining()))
        })
}

fn request_with(left: Duration) -> Req {
    let mut req = Req::new(());
    req.set_deadline(Deadline::after(left));
    req
}

#[tokio::test(start_paused = true)]
async fn no_scope_changes_nothing() {
    assert_eq!(context::current(), RequestContext::new());
    assert_eq!(context::current_deadline(), None);
    let seen = client().oneshot(Req::new(())).await.unwrap();
    assert_eq!(
        seen,
        Some(Duration::from_secs(5)),
        "the layer's own timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handlers_calls_take_the_requests_deadline() {
    let client = client();
    let server = ServiceBuilder::new()
        .layer(ScopeLayer::new())
        .service_fn(move |_req: Req| {
            let client = client.clone();
            async move {
                // Some time passes in the handler before it calls out.
                tokio::time::sleep(Duration::from_millis(100)).await;
                client.oneshot(Req::new(())).await
            }
        });
    let seen = server
        .oneshot(request_with(Duration::from_secs(1)))
        .await
        .unwrap();
    // 900 ms left when the call is made, of which the client gives 90% below.
    assert_eq!(seen, Some(Duration::from_millis(810)));
}

#[tokio::test(start_paused = true)]
async fn an_explicit_request_deadline_wins_over_the_scope() {
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(200)));
    let seen = scope
        .scope(client().oneshot(request_with(Duration::from_secs(2))))
        .await
        .unwrap();
    assert_eq!(seen, Some(Duration::from_millis(1800)));
}

#[tokio::test(start_paused = true)]
async fn nested_scopes_keep_the_earliest_deadline() {
    let outer = RequestContext::new().with_deadline(Deadline::after(Duration::from_secs(1)));
    let later = RequestContext::new().with_deadline(Deadline::after(Duration::from_secs(3)));
    let sooner = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(300)));
    outer
        .scope(async {
            let in_later = later
                .scope(async { context::current_deadline().unwrap().remaining() })
                .await;
            assert_eq!(
                in_later,
                Duration::from_secs(1),
                "an inner scope cannot extend"
            );
            let in_sooner = sooner
                .scope(async { context::current_deadline().unwrap().remaining() })
                .await;
            assert_eq!(in_sooner, Duration::from_millis(300));
            // An empty context inherits the outer deadline.
            let in_empty = RequestContext::new()
                .scope(async { context::current_deadline() })
                .await;
            assert_eq!(in_empty.unwrap().remaining(), Duration::from_secs(1));
            // Back in the outer scope.
            assert_eq!(
                context::current_deadline().unwrap().remaining(),
                Duration::from_secs(1)
            );
        })
        .await;
    assert_eq!(context::current_deadline(), None, "left every scope");
}

#[tokio::test(start_paused = true)]
async fn spawned_tasks_inherit_through_the_helper_only() {
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_secs(1)));
    let (helper, plain) = scope
        .scope(async {
            let helper = context::spawn(async { client().oneshot(Req::new(())).await });
            let plain = tokio::spawn(async { client().oneshot(Req::new(())).await });
            (helper.await.unwrap(), plain.await.unwrap())
        })
        .await;
    assert_eq!(helper.unwrap(), Some(Duration::from_millis(900)));
    assert_eq!(
        plain.unwrap(),
        Some(Duration::from_secs(5)),
        "a plain spawn is detached"
    );
}

#[tokio::test(start_paused = true)]
async fn a_past_scope_deadline_fails_calls_at_once_without_sending() {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service_fn(move |_req: Req| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        });
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(50)));
    let err = scope
        .scope(async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            client.oneshot(Req::new(())).await
        })
        .await
        .unwrap_err();
    assert!(is_timeout(err.as_ref()));
    let elapsed = err
        .downcast_ref::<backstop::timeout::Elapsed>()
        .expect("the timeout layer's error");
    assert_eq!(elapsed.cause(), ElapsedCause::CallerDeadline);
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn send_deadline_writes_the_scopes_deadline() {
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(700)));
    let req = scope.scope(async { send_deadline(Req::new(())) }).await;
    assert_eq!(req.headers()[TIMEOUT_MS_HEADER], "700");
    let outside = send_deadline(Req::new(()));
    assert!(outside.headers().get(TIMEOUT_MS_HEADER).is_none());
}

#[tokio::test(start_paused = true)]
async fn the_scope_does_not_leak_to_other_tasks_on_the_thread() {
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_secs(1)));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let other = tokio::spawn(async move {
        rx.await.unwrap();
        context::current_deadline()
    });
    scope
        .scope(async {
            // Yield inside the scope while the other task runs on this (current-thread) runtime.
            tx.send(()).unwrap();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        })
        .await;
    assert_eq!(other.await.unwrap(), None);
}

#[test]
fn a_panic_inside_a_scope_restores_the_scope_around_it() {
    let outer = RequestContext::new().with_deadline(Deadline::at(
        tokio::time::Instant::now() + Duration::from_secs(9),
    ));
    let inner = RequestContext::new().with_criticality(Criticality::Sheddable);
    outer.sync_scope(|| {
        let caught = std::panic::catch_unwind(|| {
            inner.sync_scope(|| {
                assert_eq!(context::current_criticality(), Some(Criticality::Sheddable));
                panic!("the handler fails");
            })
        });
        assert!(caught.is_err());
        assert_eq!(context::current(), outer, "the outer scope is back");
    });
    assert_eq!(context::current(), RequestContext::new());
}

#[tokio::test(start_paused = true)]
async fn a_scoped_future_dropped_before_it_ends_is_dropped_inside_its_scope() {
    /// Records the deadline its destructor sees.
    struct Probe(std::sync::Arc<std::sync::Mutex<Option<Option<Duration>>>>);
    impl Drop for Probe {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(context::current_deadline().map(Deadline::remaining));
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let probe = Probe(seen.clone());
    let scope = RequestContext::new().with_deadline(Deadline::after(Duration::from_millis(300)));
    let fut = scope.scope(async move {
        let _probe = probe;
        std::future::pending::<()>().await;
    });
    let mut fut = Box::pin(fut);
    // Started (so the probe lives in the future's state), then abandoned.
    assert!(futures_poll_once(fut.as_mut()).is_pending());
    drop(fut);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Some(Duration::from_millis(300)))
    );
    assert_eq!(context::current_deadline(), None);
}

fn futures_poll_once<F: std::future::Future>(
    fut: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}
