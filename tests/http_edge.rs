//! The HTTP edge: `ErrorToResponseLayer` turns every error of a server stack into one answer
//! (429/503 with `Retry-After` for refusals, 504 for timeouts, 500 for the rest), and axum and
//! hyper-util take the stack with no glue.
//!
//! In-process tests run on tokio's paused clock. The loopback tests (axum, hyper-util) need real
//! sockets, so they run on the real clock, bounded: every wait has a 10 s limit and none of them
//! sleeps.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use backstop::backpressure::BackpressureLayer;
use backstop::classify::HttpClassifier;
use backstop::http::{ErrorToResponseLayer, ResponseBody, error_status};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
use backstop::timeout::headers::inherit_deadline;
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use backstop::{BoxError, OverloadReason, Overloaded};
use http::{HeaderMap, Request, Response, StatusCode, header::RETRY_AFTER};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// The one answer a request gets; the error type is `Infallible`, so there is no other arm.
async fn answer<S, B>(svc: S, req: Request<String>) -> Response<ResponseBody<B>>
where
    S: Service<Request<String>, Response = Response<ResponseBody<B>>, Error = Infallible>,
{
    let Ok(res) = svc.oneshot(req).await;
    res
}

/// A handler that always fails with `err()`.
fn failing<E>(
    err: impl Fn() -> E + Clone,
) -> impl Service<
    Request<String>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<String>, BoxError>>,
> + Clone
where
    E: Into<BoxError>,
{
    service_fn(move |_req: Request<String>| {
        let err = err.clone();
        async move { Err::<Response<String>, BoxError>(err().into()) }
    })
}

async fn body_bytes<B>(body: ResponseBody<B>) -> Bytes
where
    B: http_body::Body<Data = Bytes, Error = Infallible>,
{
    let Ok(collected) = body.collect().await;
    collected.to_bytes()
}

/// An error that hides another in its source chain, as a transport or a framework would.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("while calling the inventory")
    }
}

impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

#[tokio::test(start_paused = true)]
async fn each_refusal_reason_becomes_its_status_with_retry_after_in_whole_seconds() {
    let cases = [
        (OverloadReason::Throttled, None, 429, "1"),
        (
            OverloadReason::RateLimited,
            Some(Duration::from_millis(1200)),
            429,
            "2",
        ),
        (OverloadReason::QueueFull, None, 503, "1"),
        (OverloadReason::Shed, Some(Duration::from_secs(3)), 503, "3"),
        (
            OverloadReason::AdmissionDenied,
            Some(Duration::from_millis(10)),
            503,
            "1",
        ),
        (OverloadReason::BudgetExhausted, None, 503, "1"),
    ];
    for (reason, after, status, header) in cases {
        let mut overload = Overloaded::new(reason);
        if let Some(after) = after {
            overload = overload.with_retry_after(after);
        }
        // Directly, and hidden in another error's source chain.
        for wrapped in [false, true] {
            let svc = ErrorToResponseLayer::new().layer(failing(move || -> BoxError {
                if wrapped {
                    Box::new(Wrapped(overload.into()))
                } else {
                    overload.into()
                }
            }));
            let res = answer(svc, Request::new(String::new())).await;
            assert_eq!(res.status(), status, "{reason:?} wrapped={wrapped}");
            assert_eq!(res.headers()[RETRY_AFTER], header, "{reason:?}");
            assert!(res.body().is_end_stream());
            assert!(body_bytes(res.into_body()).await.is_empty());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_of_real_layers_are_answered() -> Result<(), BoxError> {
    // A throttled client: 429.
    let shed = ShedFraction::builder("edge_test_throttle")
        .initial(1.0)
        .build()?;
    let throttled = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(
            ThrottleLayer::builder("throttle", HeaderKey::default())
                .shed(shed)
                .build()?,
        )
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, BoxError>(Response::new(String::from("served")))
        }));
    let req = Request::builder()
        .header("x-client-id", "alice")
        .body(String::new())?;
    let res = answer(throttled, req).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()[RETRY_AFTER], "1");

    // A full server: one slot, no waiting room, and the slot is held by a response whose body
    // has not ended. The next request is refused with 503.
    let bp = BackpressureLayer::builder("edge_test_backpressure")
        .max_in_flight(1)
        .max_waiting(0)
        .hold_until_body_end()
        .build()?;
    let limiter = bp.limiter().clone();
    let svc = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(bp)
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, BoxError>(Response::new(String::from("served")))
        }));
    let first = answer(svc.clone(), Request::new(String::new())).await;
    assert_eq!(first.status(), 200);
    assert_eq!(limiter.in_flight(), 1, "the body holds the slot");
    let second = answer(svc.clone(), Request::new(String::new())).await;
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()[RETRY_AFTER], "1");
    // The first body streams to its end through the edge's body, which frees the slot.
    assert_eq!(body_bytes(first.into_body()).await, "served");
    assert_eq!(limiter.in_flight(), 0);
    let third = answer(svc, Request::new(String::new())).await;
    assert_eq!(third.status(), 200);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn timeouts_become_504_without_retry_after() -> Result<(), BoxError> {
    let slow = || {
        service_fn(|_req: Request<String>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(Response::new(String::from("late")))
        })
    };

    // backstop's own timeout.
    let svc = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(TimeoutLayer::new(Duration::from_millis(100))?)
        .service(slow());
    let started = tokio::time::Instant::now();
    let res = answer(svc, Request::new(String::new())).await;
    assert_eq!(res.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert!(!res.headers().contains_key(RETRY_AFTER));
    assert!(body_bytes(res.into_body()).await.is_empty());

    // The caller's deadline, carried in a header and inherited: 0.9 × 50 ms.
    let svc = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .map_request(inherit_deadline::<String>)
        .layer(TimeoutLayer::new(Duration::from_secs(5))?)
        .service(slow());
    let started = tokio::time::Instant::now();
    let req = Request::builder()
        .header("backstop-timeout-ms", "50")
        .body(String::new())?;
    let res = answer(svc, req).await;
    assert_eq!(res.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_millis(45));

    // tower's timeout, and tokio's.
    let svc = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            100,
        )))
        .service(slow());
    assert_eq!(answer(svc, Request::new(String::new())).await.status(), 504);
    let svc = ErrorToResponseLayer::new().layer(service_fn(|_req: Request<String>| async {
        let late = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>());
        late.await?;
        Ok::<_, BoxError>(Response::new(String::new()))
    }));
    assert_eq!(answer(svc, Request::new(String::new())).await.status(), 504);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn other_errors_become_500_and_their_text_stays_private_unless_exposed() {
    let secret = || "connect to db-7.internal:5432 as admin failed";

    let svc = ErrorToResponseLayer::new().layer(failing(secret));
    let res = answer(svc, Request::new(String::new())).await;
    assert_eq!(res.status(), 500);
    assert!(!res.headers().contains_key(RETRY_AFTER));
    let in_headers = res
        .headers()
        .values()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("db-7")));
    assert!(!in_headers);
    assert!(body_bytes(res.into_body()).await.is_empty());

    // Opted in: the error's text, one line; the status is the same.
    let svc = ErrorToResponseLayer::new()
        .expose_error_text(true)
        .layer(failing(secret));
    let res = answer(svc, Request::new(String::new())).await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        res.body().size_hint().exact(),
        Some(secret().len() as u64 + 1)
    );
    assert_eq!(body_bytes(res.into_body()).await, format!("{}\n", secret()));
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_error_with_its_status_and_no_success() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = ErrorToResponseLayer::new().on_error({
        let seen = seen.clone();
        move |err: &BoxError, status: StatusCode| {
            seen.lock().unwrap().push((err.to_string(), status));
        }
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |req: Request<String>| {
            let n = calls.fetch_add(1, SeqCst);
            async move {
                match (n, req.into_body().as_str()) {
                    (_, "ok") => Ok(Response::new(String::from("fine"))),
                    (_, "refuse") => Err(Overloaded::new(OverloadReason::QueueFull).into()),
                    _ => Err::<_, BoxError>("disk full".into()),
                }
            }
        }
    }));
    for body in ["ok", "refuse", "fail", "ok"] {
        answer(svc.clone(), Request::new(body.to_owned())).await;
    }
    assert_eq!(calls.load(SeqCst), 4);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                "overloaded: queue_full".to_owned(),
                StatusCode::SERVICE_UNAVAILABLE
            ),
            ("disk full".to_owned(), StatusCode::INTERNAL_SERVER_ERROR),
        ]
    );
}

/// A body whose frames are sent one by one through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_streams_through_unchanged() {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let body = ChannelBody(rx);
    let mut body = Some(body);
    let svc = ErrorToResponseLayer::new().layer(service_fn(move |_req: Request<String>| {
        let body = body.take().expect("one request");
        async move {
            let res = Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header("x-part", "1")
                .body(body)?;
            Ok::<_, BoxError>(res)
        }
    }));
    let res = answer(svc, Request::new(String::new())).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["x-part"], "1");
    let mut body = res.into_body();

    // Each frame arrives when the inner body yields it, not buffered to the end.
    tx.send(Frame::data(Bytes::from_static(b"first")))
        .await
        .unwrap();
    let Ok(frame) = body.frame().await.expect("a frame");
    assert_eq!(frame.into_data().unwrap(), "first");
    let mut next = std::pin::pin!(body.frame());
    assert!(futures::poll!(next.as_mut()).is_pending());
    tx.send(Frame::data(Bytes::from_static(b"second")))
        .await
        .unwrap();
    let Ok(frame) = next.await.expect("a frame");
    assert_eq!(frame.into_data().unwrap(), "second");
    // Trailers too, then the end.
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    tx.send(Frame::trailers(trailers.clone())).await.unwrap();
    drop(tx);
    let Ok(frame) = body.frame().await.expect("trailers");
    assert_eq!(frame.into_trailers().unwrap(), trailers);
    assert!(body.frame().await.is_none());
}

/// A service whose readiness fails once, counting the calls it gets.
#[derive(Clone)]
struct FailsReadyOnce {
    failed: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<String>> for FailsReadyOnce {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.failed.fetch_add(1, SeqCst) == 0 {
            Poll::Ready(Err(Overloaded::new(OverloadReason::AdmissionDenied)
                .with_retry_after(Duration::from_secs(2))
                .into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        Box::pin(async { Ok(Response::new(String::from("served"))) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_answers_the_next_call_without_calling_the_inner_service() {
    let inner = FailsReadyOnce {
        failed: Arc::default(),
        calls: Arc::default(),
    };
    let calls = inner.calls.clone();
    let mut svc = ErrorToResponseLayer::new().layer(inner);

    let Ok(ready) = svc.ready().await;
    let Ok(res) = ready.call(Request::new(String::new())).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()[RETRY_AFTER], "2");
    assert_eq!(calls.load(SeqCst), 0, "the inner service was not called");

    // The next call is readied anew and served.
    let Ok(ready) = svc.ready().await;
    let Ok(res) = ready.call(Request::new(String::new())).await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_future_or_body_gives_back_its_queue_slot() -> Result<(), BoxError> {
    let queue = LifoQueueLayer::builder("edge_test_lifo")
        .max_in_flight(1)
        .hold_until_body_end()
        .build()?;
    let stats = queue.queue().clone();
    let svc = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(queue)
        .service(service_fn(|req: Request<String>| async move {
            if req.body() == "slow" {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<_, BoxError>(Response::new(String::from("body")))
        }));

    // A response whose body is alive holds the slot; a second request waits for it.
    let held = answer(svc.clone(), Request::new(String::new())).await;
    assert_eq!(stats.in_flight(), 1);
    let mut waiting = Box::pin(svc.clone().oneshot(Request::new(String::new())));
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    assert_eq!(stats.waiting(), 1);
    // Dropping the waiting future leaves the queue; dropping the body frees the slot.
    drop(waiting);
    assert_eq!(stats.waiting(), 0);
    drop(held);
    assert_eq!(stats.in_flight(), 0);

    // A running request dropped half-way frees its slot too.
    let mut running = Box::pin(svc.clone().oneshot(Request::new(String::from("slow"))));
    assert!(futures::poll!(running.as_mut()).is_pending());
    assert_eq!(stats.in_flight(), 1);
    drop(running);
    assert_eq!(stats.in_flight(), 0);
    Ok(())
}

/// The README's server stack, over axum's body, with `ErrorToResponseLayer` on top. (A macro:
/// the stack's type is long, and `Router::layer` needs it whole, not as an `impl Layer`.)
macro_rules! server_stack {
    ($name:expr, $shed:expr) => {{
        let name: &str = $name;
        let meter = LittleMeter::builder(name).capacity(16.0).build()?;
        let queue = LifoQueueLayer::builder(name)
            .max_in_flight(16)
            .hold_until_body_end()
            .build()?;
        let quotas = ClientQuotas::builder(name, Quota::per_second(NonZeroU32::new(200).unwrap()))
            .build()?;
        ServiceBuilder::new()
            .layer(ErrorToResponseLayer::new())
            .map_request(inherit_deadline::<axum::body::Body>)
            .layer(LittleLayer::new(meter).with_classifier(HttpClassifier))
            .layer(
                ThrottleLayer::builder(name, HeaderKey::default())
                    .shed($shed)
                    .quotas(quotas)
                    .build()?,
            )
            .layer(queue)
            .layer(TimeoutLayer::new(Duration::from_secs(5))?)
    }};
}

const BOUND: Duration = Duration::from_secs(10);

/// Sends one HTTP/1.1 request over a fresh connection and reads the whole answer.
async fn raw_request(addr: SocketAddr, path: &str, headers: &str) -> Result<String, BoxError> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let head =
            format!("GET {path} HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n{headers}\r\n");
        tcp.write_all(head.as_bytes()).await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    Ok(tokio::time::timeout(BOUND, exchange).await??)
}

fn status_of(answer: &str) -> Option<u16> {
    answer.split(' ').nth(1)?.parse().ok()
}

fn header_of<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn axum_serves_the_stack_under_layer_and_route_layer() -> Result<(), BoxError> {
    let shed = ShedFraction::builder("edge_test_axum").build()?;
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late"
    };
    let app = Router::new()
        .route("/stock", get(|| async { "42" }))
        .route("/slow", get(slow))
        .layer(server_stack!("edge_test_axum", shed.clone()));
    let routed = Router::new()
        .route("/stock", get(|| async { "43" }))
        .route_layer(server_stack!("edge_test_axum_route", shed.clone()));
    let app = app.nest("/routed", routed);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .await
    });

    let ok = raw_request(addr, "/stock", "x-client-id: shop\r\n").await?;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    assert!(ok.ends_with("\r\n\r\n42"), "{ok}");
    let ok = raw_request(addr, "/routed/stock", "x-client-id: shop\r\n").await?;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    assert!(ok.ends_with("\r\n\r\n43"), "{ok}");

    // The caller has 50 ms left: the server gives up at 45 ms and says so with a 504.
    let late = raw_request(
        addr,
        "/slow",
        "x-client-id: shop\r\nbackstop-timeout-ms: 50\r\n",
    )
    .await?;
    assert_eq!(status_of(&late), Some(504), "{late}");

    // Every client shed: 429 with Retry-After, on both routers.
    shed.set(1.0);
    for path in ["/stock", "/routed/stock"] {
        let refused = raw_request(addr, path, "x-client-id: shop\r\n").await?;
        assert_eq!(status_of(&refused), Some(429), "{refused}");
        assert_eq!(header_of(&refused, "retry-after"), Some("1"), "{refused}");
        assert_eq!(
            header_of(&refused, "content-length"),
            Some("0"),
            "{refused}"
        );
    }

    stop.send(()).ok();
    tokio::time::timeout(BOUND, server).await???;
    Ok(())
}

#[tokio::test]
async fn hyper_util_serves_the_stack_with_no_glue() -> Result<(), BoxError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let shed = ShedFraction::builder("edge_test_hyper").build()?;
    let queue = LifoQueueLayer::builder("edge_test_hyper")
        .max_in_flight(4)
        .hold_until_body_end()
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .map_request(inherit_deadline::<Incoming>)
        .layer(
            ThrottleLayer::builder("edge_test_hyper", HeaderKey::default())
                .shed(shed.clone())
                .build()?,
        )
        .layer(queue)
        .layer(TimeoutLayer::new(Duration::from_secs(5))?)
        // The handler's error is `Infallible`, as hyper handlers' usually is. A closure
        // handler failing with `BoxError` cannot be served from a spawned task by hyper-util
        // behind any layer that bounds `S::Error: Into<BoxError>`, tower's `Timeout` as much as
        // backstop's: hyper-util's `Oneshot` names `S::Future`, and rustc then proves the
        // bound with the closure's lifetimes erased (rust-lang/rust#64552).
        .service(service_fn(|req: Request<Incoming>| async move {
            // The caller's 1000 ms, inherited and cut to 0.9 of it by the timeout layer.
            let left = req.deadline().map(Deadline::remaining).unwrap_or_default();
            let text = format!("ms left: {}", left.as_millis());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        }));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await?;
            let service = TowerToHyperService::new(stack.clone());
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });

    let ok = raw_request(
        addr,
        "/",
        "x-client-id: shop\r\nbackstop-timeout-ms: 1000\r\n",
    )
    .await?;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let left: u64 = ok.rsplit("ms left: ").next().unwrap_or("").parse()?;
    assert!((1..=900).contains(&left), "{ok}");
    shed.set(1.0);
    let refused = raw_request(addr, "/", "x-client-id: shop\r\n").await?;
    assert_eq!(status_of(&refused), Some(429), "{refused}");
    assert_eq!(header_of(&refused, "retry-after"), Some("1"), "{refused}");
    server.abort();
    Ok(())
}

#[test]
fn error_status_reads_the_whole_chain() {
    let refusal: BoxError = Box::new(Wrapped(Overloaded::new(OverloadReason::Throttled).into()));
    assert_eq!(error_status(refusal.as_ref()), 429);
    let timeout: BoxError = Box::new(Wrapped(Box::new(std::io::Error::from(
        std::io::ErrorKind::TimedOut,
    ))));
    assert_eq!(error_status(timeout.as_ref()), 504);
    let other: BoxError = Box::new(Wrapped("refused by peer".into()));
    assert_eq!(error_status(other.as_ref()), 500);
}
