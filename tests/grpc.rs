//! The gRPC edge against the layers it feeds: pushback in the retry layer and the adaptive
//! bucket, statuses in the trailers, A6's retry throttling under the retry layer, and the
//! server's refusals as gRPC answers. Virtual time throughout.
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::classify::{Classify, DefaultClassifier, Outcome};
use backstop::grpc::{ErrorToGrpcLayer, ReadTrailersLayer, TrailersStatus};
use backstop::retry::{Budget, RetryBudget, RetryLayer, RetryThrottling};
use backstop::timeout::{Deadline, HasDeadline};
use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
use backstop::{BoxError, OverloadReason, Overloaded};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// A trailers-only gRPC answer.
fn answer(code: u32, pushback: Option<&str>) -> Response<()> {
    let mut b = Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code);
    if let Some(p) = pushback {
        b = b.header("grpc-retry-pushback-ms", p);
    }
    b.body(()).unwrap()
}

type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// A server that answers each attempt from `script` (the last answer repeats), recording when
/// each attempt came.
fn scripted(
    script: Vec<(u32, Option<&'static str>)>,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send> + Clone,
    Arrivals,
) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let log = arrivals.clone();
    let svc = tower::service_fn(move |_req: Request<()>| {
        let mut log = log.lock().unwrap();
        log.push(Instant::now());
        let (code, pushback) = script[(log.len() - 1).min(script.len() - 1)];
        async move { Ok::<_, BoxError>(answer(code, pushback)) }
    });
    (svc, arrivals)
}

fn budget() -> RetryBudget {
    RetryBudget::builder("grpc_test")
        .initial_tokens(5.0)
        .build()
        .unwrap()
}

fn get() -> Request<()> {
    Request::get("/demo.Work/Do").body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_no_sooner_than_its_pushback() {
    let (server, arrivals) = scripted(vec![(14, Some("300")), (0, None)]);
    let mut client = ServiceBuilder::new()
        .layer(RetryLayer::builder(budget()).seed(7).build().unwrap())
        .service(server);
    let res = client.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    assert!(arrivals[1] - arrivals[0] >= Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn unavailable_without_pushback_is_retried_after_the_backoff_only() {
    let (server, arrivals) = scripted(vec![(14, None), (0, None)]);
    let mut client = ServiceBuilder::new()
        .layer(RetryLayer::builder(budget()).seed(7).build().unwrap())
        .service(server);
    client.ready().await.unwrap().call(get()).await.unwrap();
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    // The default full-jitter backoff is far below the 300 ms above.
    assert!(arrivals[1] - arrivals[0] < Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_pushback_past_the_deadline_a_negative_one_and_resource_exhausted_are_not_retried() {
    for (script, deadline) in [
        (vec![(14, Some("500"))], Some(Duration::from_millis(200))),
        (vec![(14, Some("18446744073709551615"))], None),
        (vec![(14, Some("-1"))], None),
        (vec![(14, Some("soon"))], None),
        (vec![(8, Some("10"))], None),
        (vec![(8, None)], None),
        (vec![(4, None)], None),
        (vec![(1, None)], None),
    ] {
        let (server, arrivals) = scripted(script.clone());
        let mut client = ServiceBuilder::new()
            .layer(RetryLayer::builder(budget()).seed(7).build().unwrap())
            .service(server);
        let mut req = get();
        if let Some(d) = deadline {
            req.set_deadline(Deadline::after(d));
        }
        let res = client.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], script[0].0.to_string());
        assert_eq!(arrivals.lock().unwrap().len(), 1, "{script:?} {deadline:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a6_throttling_under_the_retry_layer_counts_every_failure() {
    let throttling = RetryThrottling::builder("a6").build().unwrap();
    let (server, arrivals) = scripted(vec![(14, None)]);
    let mut client = ServiceBuilder::new()
        .layer(
            RetryLayer::builder(throttling.clone())
                .seed(7)
                .build()
                .unwrap(),
        )
        .service(server);
    for _ in 0..10 {
        client.ready().await.unwrap().call(get()).await.unwrap();
    }
    // Every failure costs a token, the retry's own too: call 1 fails (9, above half: retry),
    // its retry fails (8); call 2 fails (7: retry), its retry fails (6); call 3 fails (5, not
    // above half: no retry), and so on down to 0. Ten calls, two retries.
    let sent = arrivals.lock().unwrap().len();
    assert_eq!(sent, 10 + 2, "attempts sent");
    assert_eq!(throttling.tokens(), 0.0);
    // Successes at 0.1 each: 51 bring 0 back above half.
    for _ in 0..50 {
        throttling.deposit();
    }
    assert!(!throttling.allows_retries());
    throttling.deposit();
    assert!(throttling.allows_retries());
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_bucket_counts_pushback_and_resource_exhausted_as_throttles() {
    for (code, pushback, throttles) in [
        (14, Some("100"), true),
        (8, None, true),
        (14, None, false),
        (0, None, false),
        (4, None, false),
    ] {
        let bucket = TokenBucket::builder("adaptive_grpc")
            .unlimited()
            .adaptive(AdaptiveRate::aws().build().unwrap())
            .build()
            .unwrap();
        let (server, _) = scripted(vec![(code, pushback)]);
        let mut client = ServiceBuilder::new()
            .layer(TokenBucketLayer::new(bucket.clone()))
            .service(server);
        // A few answers, 10 ms apart: the first ones carry no send rate to cut from yet.
        // (Once cut, the bucket may refuse a call itself: that is its job.)
        for _ in 0..6 {
            let _ = client.ready().await.unwrap().call(get()).await;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(bucket.rate().is_some(), throttles, "{code} {pushback:?}");
    }
}

type Frames = Vec<Result<Frame<Bytes>, Infallible>>;
type Streamed =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;
type Case = (fn() -> Frames, Option<Outcome>);

fn streamed(frames: Frames) -> Response<Streamed> {
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap()
}

fn trailers(code: &'static str, pushback: Option<&'static str>) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(code));
    if let Some(p) = pushback {
        t.insert("grpc-retry-pushback-ms", HeaderValue::from_static(p));
    }
    Frame::trailers(t)
}

#[tokio::test(start_paused = true)]
async fn a_status_in_the_trailers_is_read_before_the_layers_classify() {
    let cases: Vec<Case> = vec![
        (
            || {
                vec![
                    Ok(Frame::data(Bytes::from_static(b"msg"))),
                    Ok(trailers("0", None)),
                ]
            },
            Some(Outcome::Success),
        ),
        (
            || {
                vec![
                    Ok(Frame::data(Bytes::from_static(b"msg"))),
                    Ok(trailers("14", Some("20"))),
                ]
            },
            Some(Outcome::Retryable),
        ),
        (
            || vec![Ok(trailers("8", None))],
            Some(Outcome::Overload(None)),
        ),
        (|| vec![Ok(trailers("4", None))], Some(Outcome::Final)),
        (|| vec![Ok(trailers("x", None))], Some(Outcome::Final)),
        // No trailers at all: a missing status, UNKNOWN.
        (
            || vec![Ok(Frame::data(Bytes::from_static(b"msg")))],
            Some(Outcome::Final),
        ),
        // Trailers with no status: UNKNOWN too.
        (
            || vec![Ok(Frame::trailers(HeaderMap::new()))],
            Some(Outcome::Final),
        ),
    ];
    for (frames, expected) in cases {
        let sent_frames = frames().len();
        let inner = tower::service_fn(move |_req: Request<()>| {
            let res = streamed(frames());
            async move { Ok::<_, BoxError>(res) }
        });
        let mut svc = ServiceBuilder::new()
            .layer(ReadTrailersLayer::new())
            .service(inner);
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        let outcome = DefaultClassifier.classify(Ok::<_, &BoxError>(&res));
        assert_eq!(Some(outcome), expected);
        assert!(res.extensions().get::<TrailersStatus>().is_some());
        // The body is handed on unchanged: every frame the server sent.
        let mut body = res.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            got += 1;
        }
        assert_eq!(got, sent_frames);
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_above_read_trailers_retries_a_unary_unavailable_from_the_trailers() {
    let attempts = Arc::new(Mutex::new(0));
    let counter = attempts.clone();
    let inner = tower::service_fn(move |_req: Request<()>| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        let code = if *n == 1 { "14" } else { "0" };
        let res = streamed(vec![
            Ok(Frame::data(Bytes::from_static(b"msg"))),
            Ok(trailers(code, None)),
        ]);
        async move { Ok::<_, BoxError>(res) }
    });
    let mut client = ServiceBuilder::new()
        .layer(RetryLayer::builder(budget()).seed(7).build().unwrap())
        .layer(ReadTrailersLayer::new())
        .service(inner);
    let res = client.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), 2);
    assert_eq!(
        res.extensions()
            .get::<TrailersStatus>()
            .unwrap()
            .0
            .code
            .code(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_the_answer_streams_on_with_its_status_unread() {
    let frames = || -> Frames {
        vec![
            Ok(Frame::data(Bytes::from(vec![0u8; 100]))),
            Ok(Frame::data(Bytes::from(vec![1u8; 100]))),
            Ok(trailers("14", None)),
        ]
    };
    let inner = tower::service_fn(move |_req: Request<()>| {
        let res = streamed(frames());
        async move { Ok::<_, BoxError>(res) }
    });
    let mut svc = ServiceBuilder::new()
        .layer(ReadTrailersLayer::with_limit(50).unwrap())
        .service(inner);
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert!(res.extensions().get::<TrailersStatus>().is_none());
    assert_eq!(
        DefaultClassifier.classify(Ok::<_, &BoxError>(&res)),
        Outcome::Success
    );
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    assert_eq!(collected.to_bytes().len(), 200);
    assert_eq!(
        ReadTrailersLayer::with_limit(0).unwrap_err().field(),
        "limit"
    );
}

#[tokio::test(start_paused = true)]
async fn server_errors_become_trailers_only_grpc_answers() {
    let cases: Vec<(BoxError, &str, Option<&str>)> = vec![
        (
            Overloaded::new(OverloadReason::Throttled)
                .with_retry_after(Duration::from_millis(1500))
                .into(),
            "8",
            Some("1500"),
        ),
        (
            Overloaded::new(OverloadReason::RateLimited).into(),
            "8",
            Some("1000"),
        ),
        (
            Overloaded::new(OverloadReason::QueueFull)
                .with_retry_after(Duration::from_micros(2500))
                .into(),
            "14",
            Some("3"),
        ),
        (Box::new(tower::timeout::error::Elapsed::new()), "4", None),
        ("disk on fire".into(), "2", None),
    ];
    for (err, code, pushback) in cases {
        let err = Arc::new(Mutex::new(Some(err)));
        let inner = tower::service_fn(move |_req: Request<()>| {
            let e = err.lock().unwrap().take().unwrap();
            async move { Err::<Response<String>, BoxError>(e) }
        });
        let mut server = ServiceBuilder::new()
            .layer(ErrorToGrpcLayer::new())
            .service(inner);
        let res = server.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], code);
        assert_eq!(
            res.headers()
                .get("grpc-retry-pushback-ms")
                .map(|v| v.to_str().unwrap()),
            pushback
        );
        // A backstop client reads it back as the layers should.
        let outcome = DefaultClassifier.classify(Ok::<_, &BoxError>(&res));
        let expected = match code {
            "8" => Outcome::Overload(pushback.map(|p| Duration::from_millis(p.parse().unwrap()))),
            "14" => Outcome::Retryable,
            _ => Outcome::Final,
        };
        assert_eq!(outcome, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_answers_the_next_call() {
    struct NeverReady;
    impl Service<Request<()>> for NeverReady {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<String>, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err(Overloaded::new(OverloadReason::Shed).into()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            unreachable!("not called after a failed readiness check")
        }
    }
    let mut server = tower::Layer::layer(&ErrorToGrpcLayer::new(), NeverReady);
    let res = server.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
}

/// The gRPC hook hears of each error once, with the code it is answered with, and of no success.
#[tokio::test(start_paused = true)]
async fn the_grpc_hook_sees_every_error_with_its_code_and_no_success() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = ErrorToGrpcLayer::new().on_error({
        let seen = seen.clone();
        move |err: &BoxError, code: backstop::grpc::Code| {
            seen.lock().unwrap().push((err.to_string(), code))
        }
    });
    let mut server = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<()>| async move {
            match req.uri().path() {
                "/throttled" => Err(Overloaded::new(OverloadReason::Throttled).into()),
                "/broken" => Err::<Response<String>, BoxError>("disk on fire".into()),
                _ => Ok(Response::new(String::from("ok"))),
            }
        });
    for path in ["/ok", "/throttled", "/broken"] {
        let req = Request::builder().uri(path).body(()).unwrap();
        let res = server.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let seen = seen.lock().unwrap();
    let codes: Vec<_> = seen.iter().map(|(_, code)| *code).collect();
    assert_eq!(
        codes,
        [
            backstop::grpc::Code::RESOURCE_EXHAUSTED,
            backstop::grpc::Code::UNKNOWN
        ]
    );
    assert_eq!(seen[1].0, "disk on fire");
}

/// A gRPC body that sends one message and then, as told, fails or never ends.
struct Stuck {
    sent: bool,
    fail: bool,
}

impl http_body::Body for Stuck {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.sent {
            self.sent = true;
            return std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"msg")))));
        }
        if self.fail {
            return std::task::Poll::Ready(Some(Err("stream reset".into())));
        }
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_error_is_the_calls_error_and_trailers_that_never_come_end_at_the_timeout() {
    for fail in [true, false] {
        let inner = tower::service_fn(move |_req: Request<()>| async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Stuck { sent: false, fail })
                    .unwrap(),
            )
        });
        let mut svc = ServiceBuilder::new()
            .layer(backstop::timeout::TimeoutLayer::new(Duration::from_millis(300)).unwrap())
            .layer(ReadTrailersLayer::new())
            .service(inner);
        let started = Instant::now();
        let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
        if fail {
            assert_eq!(err.to_string(), "stream reset");
            assert_eq!(
                DefaultClassifier.classify(Err::<&Response<()>, _>(&err)),
                Outcome::Retryable
            );
        } else {
            assert!(backstop::is_timeout(err.as_ref()), "{err}");
            assert_eq!(started.elapsed(), Duration::from_millis(300));
        }
    }
}

// ---- the client's own refusals, as a tonic client reports them -------------------------------

#[path = "../examples/support/u64_codec.rs"]
mod u64_codec;

/// One unary call through a real tonic client over `stack`: the status the caller sees.
async fn tonic_status<S>(stack: S) -> tonic::Status
where
    S: tonic::client::GrpcService<tonic::body::Body, Error = BoxError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let mut client = tonic::client::Grpc::new(stack);
    client.ready().await.expect("ready");
    client
        .unary(
            tonic::Request::new(7u64),
            http::uri::PathAndQuery::from_static("/demo.Work/Do"),
            u64_codec::U64Codec,
        )
        .await
        .expect_err("the call fails")
}

type TonicReq = Request<tonic::body::Body>;
type TonicRes = Response<tonic::body::Body>;

fn refusing(
    reason: OverloadReason,
) -> impl Service<TonicReq, Response = TonicRes, Error = BoxError> {
    tower::service_fn(move |_req: TonicReq| async move {
        let refusal = Overloaded::new(reason).with_retry_after(Duration::from_millis(50));
        Err::<TonicRes, _>(BoxError::from(refusal))
    })
}

#[tokio::test(start_paused = true)]
async fn a_tonic_client_sees_its_own_refusals_as_the_status_a_server_would_send() {
    use backstop::grpc::ClientRefusalLayer;
    use tonic::Code as C;

    // Without the layer, tonic reports the client's own refusal as UNKNOWN.
    let bare = tonic_status(refusing(OverloadReason::RateLimited)).await;
    assert_eq!(bare.code(), C::Unknown);

    // With it: over the client's own rate, RESOURCE_EXHAUSTED with the pushback in metadata.
    let limited =
        tonic_status(ClientRefusalLayer::new().layer(refusing(OverloadReason::RateLimited))).await;
    assert_eq!(limited.code(), C::ResourceExhausted, "{limited:?}");
    assert_eq!(
        limited.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "50"
    );

    // A full stage of the client's own stack (a queue): still RESOURCE_EXHAUSTED, not the
    // UNAVAILABLE a server would send, which callers retry.
    let full =
        tonic_status(ClientRefusalLayer::new().layer(refusing(OverloadReason::QueueFull))).await;
    assert_eq!(full.code(), C::ResourceExhausted, "{full:?}");

    // The client's own deadline: DEADLINE_EXCEEDED.
    let slow = tower::service_fn(|_req: TonicReq| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<TonicRes, BoxError>(Response::new(tonic::body::Body::empty()))
    });
    let late = tonic_status(
        ServiceBuilder::new()
            .layer(ClientRefusalLayer::new())
            .layer(backstop::timeout::TimeoutLayer::new(Duration::from_millis(100)).unwrap())
            .service(slow),
    )
    .await;
    assert_eq!(late.code(), C::DeadlineExceeded, "{late:?}");
}

#[tokio::test(start_paused = true)]
async fn a_transport_error_keeps_the_mapping_tonic_gives_it() {
    use backstop::grpc::ClientRefusalLayer;

    let broken = || {
        tower::service_fn(|_req: TonicReq| async {
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
            Err::<TonicRes, _>(BoxError::from(io))
        })
    };
    let bare = tonic_status(broken()).await;
    let layered = tonic_status(ClientRefusalLayer::new().layer(broken())).await;
    assert_eq!(layered.code(), bare.code());
    assert_eq!(layered.message(), bare.message());
}

/// A client stage that refuses at readiness (as a shedding limit does) and is never called.
#[derive(Clone)]
struct RefusesWhenPolled;

impl Service<TonicReq> for RefusesWhenPolled {
    type Response = TonicRes;
    type Error = BoxError;
    type Future = std::future::Ready<Result<TonicRes, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Err(Overloaded::new(OverloadReason::QueueFull).into()))
    }

    fn call(&mut self, _: TonicReq) -> Self::Future {
        panic!("a refusing stage is never called");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_at_readiness_answers_the_next_call() {
    use backstop::grpc::ClientRefusalLayer;

    let status = tonic_status(ClientRefusalLayer::new().layer(RefusesWhenPolled)).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}
