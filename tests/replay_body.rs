//! Replayable request bodies: streamed requests retried and hedged, within a limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use backstop::BoxError;
use backstop::classify::HttpClassifier;
use backstop::http::{ReplayBody, ReplayBodyLayer};
use backstop::retry::{Idempotent, RetryBudget, RetryLayer};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

type Chunk = Result<Frame<Bytes>, std::io::Error>;

/// A body fed by hand, chunk by chunk: a stream, not `Clone`.
fn channel_body() -> (
    mpsc::UnboundedSender<Chunk>,
    StreamBody<tokio_stream_shim::Receiver>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, StreamBody::new(tokio_stream_shim::Receiver(rx)))
}

/// `UnboundedReceiver` as a `Stream` (tokio-stream is not a dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub struct Receiver(pub tokio::sync::mpsc::UnboundedReceiver<super::Chunk>);
    impl futures::Stream for Receiver {
        type Item = super::Chunk;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

fn data(s: &str) -> Chunk {
    Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes())))
}

fn streamed(chunks: &[&str]) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<Chunk>>> {
    let chunks: Vec<Chunk> = chunks.iter().map(|c| data(c)).collect();
    StreamBody::new(futures::stream::iter(chunks))
}

fn idempotent_post<B>(body: B) -> http::Request<B> {
    let mut req = http::Request::post("/upload").body(body).unwrap();
    req.extensions_mut().insert(Idempotent);
    req
}

/// The bodies a test server read, one per call.
type Seen = Arc<std::sync::Mutex<Vec<Bytes>>>;

/// A server whose first `fail_first` calls answer 503 after reading `read_first` chunks (all of
/// them when `None`); later calls read everything and echo it. Returns the bodies it read.
fn flaky_server<B>(
    fail_first: usize,
    read_first: Option<usize>,
) -> (
    impl Service<
        http::Request<ReplayBody<B>>,
        Response = http::Response<Bytes>,
        Error = BoxError,
        Future: Send,
    > + Clone,
    Seen,
)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let svc = tower::service_fn(move |req: http::Request<ReplayBody<B>>| {
        let n = calls.fetch_add(1, SeqCst);
        let log = log.clone();
        async move {
            let mut body = req.into_body();
            let failing = n < fail_first;
            let mut read = Vec::new();
            let limit = if failing { read_first } else { None };
            while limit.is_none_or(|l| read.len() < l) {
                match body.frame().await {
                    Some(frame) => {
                        if let Ok(d) = frame?.into_data() {
                            read.push(d)
                        }
                    }
                    None => break,
                }
            }
            let all: Bytes = read.concat().into();
            log.lock().unwrap().push(all.clone());
            let status = if failing { 503 } else { 200 };
            Ok::<_, BoxError>(http::Response::builder().status(status).body(all)?)
        }
    });
    (svc, seen)
}

fn client<S, B>(
    server: S,
    limit: usize,
) -> impl Service<http::Request<B>, Response = http::Response<Bytes>, Error = BoxError>
where
    S: Service<http::Request<ReplayBody<B>>, Response = http::Response<Bytes>, Error = BoxError>
        + Clone,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let budget = RetryBudget::builder("replay_test")
        .initial_tokens(5.0)
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(
            ReplayBodyLayer::builder("replay_test")
                .limit(limit)
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder(budget)
                .classifier(HttpClassifier)
                .build()
                .unwrap(),
        )
        .service(server)
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_retried_whole() {
    let (server, seen) = flaky_server(1, None);
    let res = client(server, 1024)
        .oneshot(idempotent_post(streamed(&["hello ", "streamed ", "world"])))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![Bytes::from("hello streamed world"); 2]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_an_early_answer_reads_the_rest_of_the_stream() {
    // The first attempt answers 503 after one chunk; the retry replays it and reads on.
    let (server, seen) = flaky_server(1, Some(1));
    let res = client(server, 1024)
        .oneshot(idempotent_post(streamed(&["a", "b", "c"])))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![Bytes::from("a"), Bytes::from("abc")]);
}

fn counter(snapshotter: &Snapshotter, reason: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == "backstop_replay_abandoned_total"
                && k.key().labels().any(|l| l.value() == reason)
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => c,
            other => panic!("not a counter: {other:?}"),
        })
        .expect("registered at build")
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (server, seen) = flaky_server(1, None);
    let svc = metrics::with_local_recorder(&recorder, || client(server, 8));
    let res = svc
        .oneshot(idempotent_post(streamed(&["0123456", "789abcdef"])))
        .await
        .unwrap();
    // The first answer goes back as it is: no retry, no error of its own.
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0], Bytes::from("0123456789abcdef"));
    assert_eq!(counter(&snapshotter, "too_large"), 1);
    assert_eq!(counter(&snapshotter, "body_error"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_whose_size_is_known_too_large_is_never_kept() {
    let body = http_body_util::Full::new(Bytes::from(vec![7u8; 100]));
    let (server, seen) = flaky_server(1, None);
    let res = client(server, 64)
        .oneshot(idempotent_post(body))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_mid_stream_is_not_replayed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let chunks: Vec<Chunk> = vec![data("part"), Err(std::io::Error::other("client went away"))];
    let body = StreamBody::new(futures::stream::iter(chunks));
    let (server, seen) = flaky_server(1, None);
    let svc = metrics::with_local_recorder(&recorder, || client(server, 1024));
    let err = svc.oneshot(idempotent_post(body)).await.unwrap_err();
    // The body's own error, once: the server read "part" and then failed on the error.
    assert!(err.to_string().contains("client went away"), "{err}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the server failed before answering"
    );
    assert_eq!(counter(&snapshotter, "body_error"), 1);
}

#[tokio::test(start_paused = true)]
async fn two_copies_read_the_same_stream_at_once() {
    let recorder = DebuggingRecorder::new();
    let (tx, body) = channel_body();
    let layer = metrics::with_local_recorder(&recorder, || ReplayBodyLayer::new("copies"));
    let first = replayable(layer, body).await;
    let second = first.clone();
    let a = tokio::spawn(first.collect());
    let b = tokio::spawn(second.collect());
    for chunk in ["one ", "two ", "three"] {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(data(chunk)).unwrap();
    }
    drop(tx);
    let a = a.await.unwrap().unwrap().to_bytes();
    let b = b.await.unwrap().unwrap().to_bytes();
    assert_eq!(a, "one two three");
    assert_eq!(b, "one two three");
}

#[tokio::test(start_paused = true)]
async fn a_copy_dropped_while_waiting_does_not_strand_the_other() {
    let (tx, body) = channel_body();
    let mut first = replayable(ReplayBodyLayer::new("drop"), body).await;
    let second = first.clone();
    // The first copy polls the stream (and so holds its wake-up), then is dropped.
    let polled = futures::poll!(first.frame());
    assert!(polled.is_pending());
    let b = tokio::spawn(second.collect());
    tokio::task::yield_now().await;
    drop(first);
    tx.send(data("late")).unwrap();
    drop(tx);
    let b = tokio::time::timeout(Duration::from_secs(1), b)
        .await
        .expect("the second copy was woken")
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(b, "late");
}

#[tokio::test(start_paused = true)]
async fn a_copy_behind_an_overflow_fails_and_the_copy_ahead_completes() {
    let (tx, body) = channel_body();
    let mut ahead = replayable(
        ReplayBodyLayer::builder("behind").limit(4).build().unwrap(),
        body,
    )
    .await;
    let mut behind = ahead.clone();
    tx.send(data("abc")).unwrap();
    tx.send(data("defgh")).unwrap();
    drop(tx);
    let one = ahead.frame().await.unwrap().unwrap().into_data().unwrap();
    let two = ahead.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!((one, two), (Bytes::from("abc"), Bytes::from("defgh")));
    assert!(!ahead.is_replayable());
    let err = behind.frame().await.unwrap().unwrap_err();
    assert!(err.is::<backstop::http::replay::NotReplayable>(), "{err}");
    assert!(ahead.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn trailers_are_replayed() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let chunks: Vec<Chunk> = vec![data("x"), Ok(Frame::trailers(trailers.clone()))];
    let first = replayable(
        ReplayBodyLayer::new("trailers"),
        StreamBody::new(futures::stream::iter(chunks)),
    )
    .await;
    let second = first.clone();
    let a = first.collect().await.unwrap();
    assert_eq!(a.trailers(), Some(&trailers));
    let b = second.collect().await.unwrap();
    assert_eq!(b.trailers(), Some(&trailers));
    assert_eq!(b.to_bytes(), "x");
}

/// `body` as the layer's service hands it on: a `ReplayBody` of it.
async fn replayable<B>(layer: ReplayBodyLayer, body: B) -> ReplayBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    use tower::Layer;
    let svc = layer.layer(tower::service_fn(
        |req: http::Request<ReplayBody<B>>| async move { Ok::<_, BoxError>(req) },
    ));
    svc.oneshot(http::Request::new(body))
        .await
        .expect("the layer does not fail")
        .into_body()
}

/// A proxy over real HTTP: the inbound `hyper::body::Incoming` (not `Clone`) goes to a flaky
/// backend through the replay and retry layers, and the retry carries the whole body.
#[tokio::test]
async fn works_with_hyper_incoming() {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (backend, seen) = flaky_server::<hyper::body::Incoming>(1, None);
    let proxy = client(backend, 64 * 1024);
    let proxy = Arc::new(tokio::sync::Mutex::new(proxy));
    let server = async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let proxy = proxy.clone();
            async move {
                let mut req = req;
                req.extensions_mut().insert(Idempotent);
                let fut = proxy.lock().await.ready().await?.call(req);
                let res = fut.await?;
                Ok::<_, BoxError>(res.map(http_body_util::Full::new))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await
            .unwrap();
    };
    let run = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body = streamed(&["over ", "the ", "wire"]);
        let req = http::Request::post("/").body(body).unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    };
    // The server ends when the client's connection closes.
    let ((status, body), ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, server) })
            .await
            .expect("bounded");
    assert_eq!(status, 200);
    assert_eq!(body, "over the wire");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the first attempt failed and was retried"
    );
}

/// A hedge over a streamed body: the duplicate is sent while the body can be replayed, and not
/// once it has outgrown the limit.
async fn hedged_copies(limit: usize, chunks: &[&str]) -> (usize, Vec<Bytes>) {
    use backstop::hedge::HedgeLayer;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen: Seen = Arc::default();
    let server = {
        let (calls, seen) = (calls.clone(), seen.clone());
        tower::service_fn(move |req: http::Request<ReplayBody<_>>| {
            let first = calls.fetch_add(1, SeqCst) == 0;
            let seen = seen.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                seen.lock().unwrap().push(body.clone());
                // The first copy is slow: the hedge fires at 10 ms.
                if first {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<_, BoxError>(http::Response::new(body))
            }
        })
    };
    let hedge = HedgeLayer::builder("hedge")
        .fixed_delay(Duration::from_millis(10))
        .starting_tokens(5.0)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            ReplayBodyLayer::builder("hedged")
                .limit(limit)
                .build()
                .unwrap(),
        )
        .layer(hedge)
        .service(server);
    let req = http::Request::get("/").body(streamed(chunks)).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let whole: String = chunks.concat();
    assert_eq!(res.into_body(), whole.as_str());
    let seen = seen.lock().unwrap().clone();
    (calls.load(SeqCst), seen)
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_hedged_whole_within_the_limit() {
    let (calls, seen) = hedged_copies(1024, &["hedge ", "me"]).await;
    assert_eq!(calls, 2, "the duplicate was sent");
    assert_eq!(seen, vec![Bytes::from("hedge me"); 2]);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_not_hedged() {
    let (calls, seen) = hedged_copies(4, &["too ", "long"]).await;
    assert_eq!(calls, 1, "no duplicate of a body that cannot be replayed");
    assert_eq!(seen, vec![Bytes::from("too long")]);
}
