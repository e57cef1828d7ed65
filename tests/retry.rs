//! The retry layer and its budget: what is retried, when, and what it costs.
#![cfg(all(feature = "http", feature = "sim"))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::classify::HttpClassifier;
use backstop::retry::{
    ATTEMPT_HEADER, AlreadyRetried, Attempt, Budget, Idempotent, MarkRetried, RETRIED_HEADER,
    RetryBudget, RetryKind, RetryLayer, RetryRequest, http_method_is_idempotent,
};
use backstop::timeout::{Deadline, HasDeadline};
use backstop::{BoxError, OverloadReason, Overloaded};
use futures::FutureExt;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// A plain request: an id, an optional deadline, whether it is idempotent, its attempt number.
#[derive(Clone, Debug)]
struct Req {
    id: u32,
    deadline: Option<Deadline>,
    idempotent: bool,
    attempt: u32,
}

impl Req {
    fn new(id: u32) -> Self {
        Req {
            id,
            deadline: None,
            idempotent: true,
            attempt: 1,
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

impl RetryRequest for Req {
    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
    fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

/// What a scripted attempt does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Timeout,
    Overload,
}

impl Answer {
    fn into_result(self, id: u32) -> Result<u32, BoxError> {
        match self {
            Answer::Ok => Ok(id),
            Answer::Fail => Err("connection reset".into()),
            Answer::Timeout => Err(Box::new(tower::timeout::error::Elapsed::new())),
            Answer::Overload => Err(Overloaded::new(OverloadReason::QueueFull).into()),
        }
    }
}

/// Every request the scripted service saw: (id, attempt, when).
type Log = Arc<Mutex<Vec<(u32, u32, Instant)>>>;

/// A service answering each attempt by `script(id, attempt)` after `latency`.
fn scripted(
    latency: Duration,
    script: impl Fn(u32, u32) -> Answer + Clone + Send + 'static,
) -> (
    impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone,
    Log,
) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let svc = tower::service_fn(move |req: Req| {
        seen.lock()
            .unwrap()
            .push((req.id, req.attempt, Instant::now()));
        let answer = script(req.id, req.attempt);
        async move {
            tokio::time::sleep(latency).await;
            answer.into_result(req.id)
        }
    });
    (svc, log)
}

fn budget_with(tokens: f64) -> RetryBudget {
    RetryBudget::builder("test")
        .min_per_second(0.0)
        .initial_tokens(tokens)
        .build()
        .unwrap()
}

fn sends(log: &Log) -> usize {
    log.lock().unwrap().len()
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_is_retried_once_and_the_retry_is_marked() {
    let budget = budget_with(5.0);
    let (svc, log) = scripted(Duration::from_millis(5), |_, _| Answer::Fail);
    let mut retry = RetryLayer::new(budget.clone()).layer(svc);

    let err = retry
        .ready()
        .await
        .unwrap()
        .call(Req::new(1))
        .await
        .unwrap_err();
    let attempts: Vec<u32> = log.lock().unwrap().iter().map(|e| e.1).collect();
    assert_eq!(
        attempts,
        vec![1, 2],
        "sent twice, the second marked as attempt 2"
    );
    assert!(AlreadyRetried::is_marked(err.as_ref()), "{err}");
    assert_eq!(budget.tokens(), 4.0);
}

#[tokio::test(start_paused = true)]
async fn an_overload_is_never_retried() {
    let budget = budget_with(5.0);
    let (svc, log) = scripted(Duration::from_millis(5), |_, _| Answer::Overload);
    let mut retry = RetryLayer::builder(budget.clone())
        .retry_non_idempotent()
        .build()
        .unwrap()
        .layer(svc);

    let err = retry
        .ready()
        .await
        .unwrap()
        .call(Req::new(1))
        .await
        .unwrap_err();
    assert!(backstop::is_overload(err.as_ref()));
    assert!(!AlreadyRetried::is_marked(err.as_ref()));
    assert_eq!(sends(&log), 1);
    assert_eq!(budget.stats().granted, 0);
}

type HttpLog = Arc<Mutex<Vec<http::Request<()>>>>;

/// An HTTP service answering with `status` (and `Retry-After: 1` when asked), recording requests.
fn http_service(
    status: u16,
    retry_after: bool,
) -> (
    impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send>
    + Clone,
    HttpLog,
) {
    let log: HttpLog = Arc::default();
    let seen = log.clone();
    let svc = tower::service_fn(move |req: http::Request<()>| {
        seen.lock().unwrap().push(req);
        let mut res = http::Response::builder().status(status);
        if retry_after {
            res = res.header("retry-after", "1");
        }
        let res = res.body(()).unwrap();
        async move { Ok::<_, BoxError>(res) }
    });
    (svc, log)
}

fn idempotent_get() -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut().insert(Idempotent);
    req
}

#[tokio::test(start_paused = true)]
async fn a_429_or_a_503_with_retry_after_is_never_retried_but_a_500_is() {
    for (status, retry_after, expected_sends) in [
        (429, false, 1),
        (429, true, 1),
        (503, true, 1),
        (500, false, 2),
        (503, false, 2),
    ] {
        let (svc, log) = http_service(status, retry_after);
        let mut retry = RetryLayer::builder(budget_with(5.0))
            .classifier(HttpClassifier)
            .build()
            .unwrap()
            .layer(svc);
        let res = retry
            .ready()
            .await
            .unwrap()
            .call(idempotent_get())
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(sends_http(&log), expected_sends, "status {status}");
        // Only a response this layer retried is marked as retried.
        assert_eq!(
            res.headers().contains_key(RETRIED_HEADER),
            expected_sends == 2,
            "status {status}"
        );
    }
}

fn sends_http(log: &HttpLog) -> usize {
    log.lock().unwrap().len()
}

#[tokio::test(start_paused = true)]
async fn the_http_retry_carries_the_attempt_header_and_extension() {
    let (svc, log) = http_service(502, false);
    let mut retry = RetryLayer::builder(budget_with(5.0))
        .classifier(HttpClassifier)
        .build()
        .unwrap()
        .layer(svc);
    retry
        .ready()
        .await
        .unwrap()
        .call(idempotent_get())
        .await
        .unwrap();
    let log = log.lock().unwrap();
    assert!(log[0].headers().get(ATTEMPT_HEADER).is_none());
    assert_eq!(log[1].headers()[ATTEMPT_HEADER], "2");
    assert_eq!(log[1].extensions().get::<Attempt>(), Some(&Attempt(2)));
}

#[tokio::test(start_paused = true)]
async fn a_response_marked_as_retried_below_is_not_retried_again() {
    let svc = tower::service_fn(|_req: http::Request<()>| async {
        let res = http::Response::builder()
            .status(500)
            .header(RETRIED_HEADER, "1")
            .body(())
            .unwrap();
        Ok::<_, BoxError>(res)
    });
    let calls = Arc::new(Mutex::new(0));
    let counted = {
        let calls = calls.clone();
        tower::ServiceBuilder::new()
            .map_request(move |r| {
                *calls.lock().unwrap() += 1;
                r
            })
            .service(svc)
    };
    let build = |honour| {
        RetryLayer::builder(budget_with(5.0))
            .classifier(HttpClassifier)
            .honour_retried_marker(honour)
            .build()
            .unwrap()
            .layer(counted.clone())
    };
    build(true).oneshot(idempotent_get()).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 1);
    build(false).oneshot(idempotent_get()).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 3, "not honoured: retried");
}

#[tokio::test(start_paused = true)]
async fn an_error_marked_as_retried_below_is_not_retried_again() {
    let inner = tower::service_fn(|_req: Req| async {
        Err::<u32, BoxError>(Box::new(AlreadyRetried::new("reset".into())))
    });
    let budget = budget_with(5.0);
    let mut retry = RetryLayer::new(budget.clone()).layer(inner);
    retry
        .ready()
        .await
        .unwrap()
        .call(Req::new(1))
        .await
        .unwrap_err();
    assert_eq!(budget.stats().granted, 0);
}

#[tokio::test(start_paused = true)]
async fn mark_always_tells_the_layer_above_not_to_retry() {
    // Two layers: the inner one marks every failure and does not retry; the outer one honours it.
    let (svc, log) = scripted(Duration::from_millis(1), |_, _| Answer::Fail);
    let inner = RetryLayer::builder(budget_with(5.0))
        .max_retries(0)
        .mark_retried(MarkRetried::Always)
        .build()
        .unwrap();
    let outer_budget = budget_with(5.0);
    let outer = RetryLayer::new(outer_budget.clone());
    let stack = outer.layer(inner.layer(svc));
    stack.oneshot(Req::new(1)).await.unwrap_err();
    assert_eq!(sends(&log), 1);
    assert_eq!(outer_budget.stats().granted, 0);
}

#[tokio::test(start_paused = true)]
async fn a_non_idempotent_request_is_not_retried_unless_opted_in() {
    let (svc, log) = scripted(Duration::from_millis(1), |_, _| Answer::Fail);
    let not_idempotent = Req {
        idempotent: false,
        ..Req::new(1)
    };
    RetryLayer::new(budget_with(5.0))
        .layer(svc.clone())
        .oneshot(not_idempotent.clone())
        .await
        .unwrap_err();
    assert_eq!(sends(&log), 1);

    RetryLayer::builder(budget_with(5.0))
        .retry_non_idempotent()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(not_idempotent)
        .await
        .unwrap_err();
    assert_eq!(sends(&log), 3, "opted in: retried");
}

#[tokio::test(start_paused = true)]
async fn an_idempotency_predicate_decides_for_http() {
    let (svc, log) = http_service(500, false);
    let layer = RetryLayer::builder(budget_with(5.0))
        .classifier(HttpClassifier)
        .idempotent_if(http_method_is_idempotent)
        .build()
        .unwrap();
    let post = http::Request::post("/").body(()).unwrap();
    layer.layer(svc.clone()).oneshot(post).await.unwrap();
    assert_eq!(sends_http(&log), 1, "POST is not retried");
    let get = http::Request::get("/").body(()).unwrap();
    layer.layer(svc).oneshot(get).await.unwrap();
    assert_eq!(sends_http(&log), 3, "GET is");
}

/// Without a predicate, an HTTP request's own method decides: a plain GET is retried, a plain
/// POST is not, a POST marked `Idempotent` is.
#[tokio::test(start_paused = true)]
async fn http_requests_are_idempotent_by_method_by_default() {
    let (svc, log) = http_service(500, false);
    let layer = RetryLayer::builder(budget_with(5.0))
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let post = http::Request::post("/").body(()).unwrap();
    layer.layer(svc.clone()).oneshot(post).await.unwrap();
    assert_eq!(sends_http(&log), 1, "POST is not retried");
    let get = http::Request::get("/").body(()).unwrap();
    layer.layer(svc.clone()).oneshot(get).await.unwrap();
    assert_eq!(sends_http(&log), 3, "GET is");
    let mut marked = http::Request::post("/").body(()).unwrap();
    marked.extensions_mut().insert(Idempotent);
    layer.layer(svc).oneshot(marked).await.unwrap();
    assert_eq!(sends_http(&log), 5, "a marked POST is");
}

#[tokio::test(start_paused = true)]
async fn the_retry_never_runs_past_the_deadline() {
    let min_left = Duration::from_millis(10);
    for seed in 0..50 {
        let (svc, log) = scripted(Duration::from_millis(80), |_, _| Answer::Fail);
        let layer = RetryLayer::builder(budget_with(5.0))
            // A delay drawn from up to 2 s, far past the 100 ms deadline: it must be clipped.
            .backoff(Duration::from_secs(1), Duration::from_secs(2))
            .min_time_left(min_left)
            .seed(seed)
            .build()
            .unwrap();
        let deadline = Deadline::after(Duration::from_millis(100));
        let req = Req {
            deadline: Some(deadline),
            ..Req::new(1)
        };
        layer.layer(svc).oneshot(req).await.unwrap_err();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "20 ms were left, more than the 10 ms minimum");
        assert!(
            log[1].2 + min_left <= deadline.instant(),
            "seed {seed}: the retry started {:?} before the deadline",
            deadline.instant() - log[1].2
        );
    }

    // With 5 ms left after the first attempt, less than the minimum, there is no retry, and no
    // token is spent.
    let budget = budget_with(5.0);
    let (svc, log) = scripted(Duration::from_millis(95), |_, _| Answer::Fail);
    let layer = RetryLayer::builder(budget.clone())
        .min_time_left(min_left)
        .build()
        .unwrap();
    let req = Req {
        deadline: Some(Deadline::after(Duration::from_millis(100))),
        ..Req::new(1)
    };
    layer.layer(svc).oneshot(req).await.unwrap_err();
    assert_eq!(sends(&log), 1);
    assert_eq!(budget.tokens(), 5.0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_delay_cancels_the_retry_and_refunds_the_token() {
    let budget = budget_with(1.0);
    let (svc, log) = scripted(Duration::from_millis(10), |_, _| Answer::Fail);
    let mut retry = RetryLayer::builder(budget.clone())
        .backoff(Duration::from_secs(1), Duration::from_secs(2))
        .seed(7)
        .build()
        .unwrap()
        .layer(svc);

    retry.ready().await.unwrap();
    let mut fut = Box::pin(retry.call(Req::new(1)));
    // Run the first attempt to its failure; the layer withdraws a token and starts the delay.
    assert!((&mut fut).now_or_never().is_none());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!((&mut fut).now_or_never().is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!((&mut fut).now_or_never().is_none(), "still in the delay");
    assert_eq!(budget.tokens(), 0.0, "the retry was paid for");
    assert_eq!(sends(&log), 1);

    drop(fut);
    assert_eq!(budget.tokens(), 1.0, "refunded");
    let stats = budget.stats();
    assert_eq!((stats.granted, stats.refunded), (1, 1));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(sends(&log), 1, "the retry was never sent");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_retry_costs_two_tokens() {
    let budget = budget_with(3.0);
    let (svc, log) = scripted(Duration::from_millis(1), |_, attempt| {
        if attempt == 1 {
            Answer::Timeout
        } else {
            Answer::Ok
        }
    });
    let retry = RetryLayer::new(budget.clone()).layer(svc);
    retry.clone().oneshot(Req::new(1)).await.unwrap();
    // 3 - 2 for the retry + 0.01 for its success.
    assert!((budget.tokens() - 1.01).abs() < 1e-9, "{}", budget.tokens());
    retry.oneshot(Req::new(2)).await.unwrap_err();
    assert_eq!(
        sends(&log),
        3,
        "1.01 tokens do not pay for a second timeout retry"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_the_budget() {
    let budget = budget_with(1.0);
    let (svc, log) = scripted(Duration::from_millis(1), |_, _| Answer::Fail);
    let a = RetryLayer::new(budget.clone()).layer(svc);
    let b = a.clone();
    a.oneshot(Req::new(1)).await.unwrap_err();
    b.oneshot(Req::new(2)).await.unwrap_err();
    assert_eq!(sends(&log), 3, "one token: one retry between both clones");
    assert_eq!(budget.stats().denied, 1);
}

#[test]
fn more_than_one_retry_is_refused_with_a_reason() {
    let err = RetryLayer::builder(budget_with(0.0))
        .max_retries(2)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_retries");
    assert!(err.to_string().contains("multiply"), "{err}");
    let err = RetryLayer::builder(budget_with(0.0))
        .backoff(Duration::from_secs(2), Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "backoff");
}

#[test]
fn budget_metrics_read_zero_once_built() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let budget = metrics::with_local_recorder(&recorder, || {
        RetryBudget::builder("edge")
            .min_per_second(0.0)
            .build()
            .unwrap()
    });
    let values: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    use backstop::metrics::names;
    assert_eq!(values[names::RETRIES_ALLOWED], DebugValue::Counter(0));
    assert_eq!(values[names::RETRIES_DENIED], DebugValue::Counter(0));
    assert!(matches!(values[names::RETRY_BUDGET_TOKENS], DebugValue::Gauge(g) if g.0 == 0.0));

    metrics::with_local_recorder(&recorder, || {
        budget.deposit();
        assert!(!budget.try_withdraw(RetryKind::AfterError));
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let denied = snapshot
        .iter()
        .find(|(k, ..)| k.key().name() == names::RETRIES_DENIED)
        .map(|e| &e.3);
    assert_eq!(denied, Some(&DebugValue::Counter(1)));
}

/// One scripted request for the property test.
#[derive(Clone, Debug)]
struct Scripted {
    gap_ms: u64,
    latency_ms: u64,
    first: Answer,
    second: Answer,
    deadline_ms: Option<u64>,
    drop_after_ms: Option<u64>,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Ok),
        4 => Just(Answer::Fail),
        1 => Just(Answer::Timeout),
        1 => Just(Answer::Overload),
    ]
}

fn scripted_request() -> impl Strategy<Value = Scripted> {
    (
        0u64..400,
        1u64..200,
        answer(),
        answer(),
        proptest::option::weighted(0.3, 50u64..400),
        proptest::option::weighted(0.2, 0u64..300),
    )
        .prop_map(
            |(gap_ms, latency_ms, first, second, deadline_ms, drop_after_ms)| Scripted {
                gap_ms,
                latency_ms,
                first,
                second,
                deadline_ms,
                drop_after_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any outcomes and timings: the retries sent, priced, stay within
    /// initial + ratio × successes + floor × elapsed seconds; no request is sent more than twice;
    /// every withdrawal is either sent or refunded.
    #[test]
    fn retries_stay_within_the_budget(
        ratio in prop_oneof![Just(0.01), Just(0.3), Just(0.6), 0.001f64..1.0],
        floor in prop_oneof![Just(0.0), 0.0f64..5.0],
        initial in 0.0f64..3.0,
        requests in proptest::collection::vec(scripted_request(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let start = Instant::now();
            let budget = RetryBudget::builder("prop")
                .ratio(ratio)
                .min_per_second(floor)
                .initial_tokens(initial)
                .build()
                .unwrap();
            let script: Arc<Vec<Scripted>> = Arc::new(requests.clone());
            let (svc, log) = {
                let script = script.clone();
                let log: Log = Arc::default();
                let seen = log.clone();
                let svc = tower::service_fn(move |req: Req| {
                    seen.lock().unwrap().push((req.id, req.attempt, Instant::now()));
                    let s = &script[req.id as usize];
                    let answer = if req.attempt == 1 { s.first } else { s.second };
                    let latency = Duration::from_millis(s.latency_ms);
                    async move {
                        tokio::time::sleep(latency).await;
                        answer.into_result(req.id)
                    }
                });
                (svc, log)
            };
            let retry = RetryLayer::builder(budget.clone())
                .seed(1)
                .build()
                .unwrap()
                .layer(svc);

            let mut arrival = start;
            let mut calls = Vec::new();
            for (id, s) in requests.iter().enumerate() {
                arrival += Duration::from_millis(s.gap_ms);
                let (svc, s) = (retry.clone(), s.clone());
                calls.push(async move {
                    tokio::time::sleep_until(arrival).await;
                    let req = Req {
                        deadline: s.deadline_ms.map(|ms| Deadline::after(Duration::from_millis(ms))),
                        ..Req::new(id as u32)
                    };
                    let call = svc.oneshot(req);
                    match s.drop_after_ms {
                        // Dropped mid-flight, wherever it is: first attempt, delay or retry.
                        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), call)
                            .await
                            .is_ok(),
                        None => {
                            let _ = call.await;
                            true
                        }
                    }
                });
            }
            futures::future::join_all(calls).await;
            let elapsed = start.elapsed().as_secs_f64();

            let log = log.lock().unwrap();
            let mut per_request: HashMap<u32, Vec<u32>> = HashMap::new();
            for (id, attempt, _) in log.iter() {
                per_request.entry(*id).or_default().push(*attempt);
            }
            let mut priced = 0.0;
            let mut retries = 0u64;
            for (id, attempts) in &per_request {
                prop_assert!(attempts.len() <= 2, "request {id} sent {} times", attempts.len());
                if attempts.len() == 2 {
                    retries += 1;
                    priced += match script[*id as usize].first {
                        Answer::Timeout => 2.0,
                        _ => 1.0,
                    };
                    prop_assert!(
                        matches!(script[*id as usize].first, Answer::Fail | Answer::Timeout),
                        "only retryable failures are retried"
                    );
                }
            }
            let stats = budget.stats();
            prop_assert_eq!(stats.granted - stats.refunded, retries);
            let bound = initial + ratio * stats.deposits as f64 + floor * elapsed;
            prop_assert!(
                priced <= bound + 1e-6,
                "{priced} tokens of retries > bound {bound} (deposits {}, elapsed {elapsed})",
                stats.deposits
            );
            Ok(())
        })?;
    }
}

/// A service that is not ready again until 500 ms after each call, and fails every call.
struct Gated {
    ready_at: Arc<Mutex<Instant>>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    log: Log,
}

impl Clone for Gated {
    fn clone(&self) -> Self {
        Gated {
            ready_at: self.ready_at.clone(),
            sleep: None,
            log: self.log.clone(),
        }
    }
}

impl Service<Req> for Gated {
    type Response = u32;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let at = *self.ready_at.lock().unwrap();
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        std::task::ready!(sleep.as_mut().poll_unpin(cx));
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.log
            .lock()
            .unwrap()
            .push((req.id, req.attempt, Instant::now()));
        *self.ready_at.lock().unwrap() = Instant::now() + Duration::from_millis(500);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<u32, BoxError>("connection reset".into())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_waits_for_readiness_past_the_deadline_is_not_sent_and_refunded() {
    let log: Log = Arc::default();
    let gated = Gated {
        ready_at: Arc::new(Mutex::new(Instant::now())),
        sleep: None,
        log: log.clone(),
    };
    let budget = budget_with(5.0);
    let layer = RetryLayer::builder(budget.clone())
        .backoff(Duration::ZERO, Duration::ZERO)
        .min_time_left(Duration::from_millis(10))
        .build()
        .unwrap();
    let req = Req {
        deadline: Some(Deadline::after(Duration::from_millis(100))),
        ..Req::new(1)
    };
    let err = layer.layer(gated).oneshot(req).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry decided below: connection reset",
        "the first failure, marked: this layer decided"
    );
    assert_eq!(sends(&log), 1);
    assert_eq!(budget.tokens(), 5.0);
    assert_eq!(budget.stats().refunded, 1);
}

mod chain {
    //! The simulation, small: four services in a chain, the bottom one failing.

    use super::*;
    use backstop::sim::{
        Arrivals, CallPolicy, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario, ServiceTime,
        SimRequest, SimServer, SimService,
    };

    /// The retrying client each service uses to call the next.
    #[derive(Clone, Copy, Debug)]
    enum Client {
        /// 3 retries per call, no budget.
        Naive,
        /// `RetryLayer` at the defaults, except the budget's floor gate and the marking.
        Backstop { gated: bool, mark: MarkRetried },
    }

    const DEFAULTS: Client = Client::Backstop {
        gated: true,
        mark: MarkRetried::Always,
    };
    /// Before this change: a fixed floor of 1 retry/s, and only retried failures marked.
    const BEFORE: Client = Client::Backstop {
        gated: false,
        mark: MarkRetried::AfterRetry,
    };

    /// Calls at the bottom during the outage, per logical request.
    type PerRequest = Arc<Mutex<HashMap<u64, u64>>>;

    /// The bottom service: healthy until `healthy` into the run, failing every call after;
    /// counts the calls of each logical request during the outage.
    fn bottom(server: SimServer, healthy: Duration, counts: PerRequest) -> SimService {
        let outage = Instant::now() + healthy;
        SimService::new(tower::service_fn(move |req: SimRequest| {
            let (server, counts) = (server.clone(), counts.clone());
            let failing = Instant::now() >= outage;
            if failing {
                *counts.lock().unwrap().entry(req.logical).or_default() += 1;
            }
            async move {
                let res = server.oneshot(req).await?;
                if failing {
                    Err::<backstop::sim::SimResponse, BoxError>("down".into())
                } else {
                    Ok(res)
                }
            }
        }))
    }

    /// What the bottom saw during the outage.
    struct Figures {
        requests: u64,
        calls: u64,
        max_per_request: u64,
    }

    impl Figures {
        fn amplification(&self) -> f64 {
            self.calls as f64 / self.requests.max(1) as f64
        }
    }

    /// `rps` for `healthy + failing` seconds through four services, the bottom failing after
    /// `healthy` seconds.
    fn run(client: Client, rps: f64, healthy: u64, failing: u64) -> Figures {
        let counts = PerRequest::default();
        let hop = |n: usize| {
            let hop = Hop::new(
                format!("s{n}"),
                1_000,
                ServiceTime::Fixed(Duration::from_millis(1)),
            );
            let hop = match client {
                Client::Naive => hop.caller_policy(CallPolicy {
                    attempt_timeout: None,
                    retry: RetryPolicy::Naive {
                        retries: 3,
                        backoff: Duration::from_millis(10),
                        jitter: 0.0,
                    },
                }),
                Client::Backstop { gated, mark } => {
                    let budget = RetryBudget::builder(format!("s{n}"))
                        .floor_needs_successes(gated)
                        .build()
                        .unwrap();
                    let layer = RetryLayer::builder(budget)
                        .retry_non_idempotent()
                        .mark_retried(mark)
                        .seed(n as u64)
                        .build()
                        .unwrap();
                    hop.caller_stack(move |next| SimService::new(layer.layer(next)))
                }
            };
            if n == 4 {
                let counts = counts.clone();
                let healthy = Duration::from_secs(healthy);
                hop.stack(move |server| bottom(server, healthy, counts.clone()))
            } else {
                hop
            }
        };
        let secs = healthy + failing;
        let scenario = Scenario::builder("chain")
            .seed(9)
            .profile(LoadProfile::new().step(Duration::from_secs(secs), rps))
            .arrivals(Arrivals::Poisson)
            .run_for(Duration::from_secs(secs + 6))
            .clients(ClientBehavior {
                patience: Duration::from_secs(3),
                ..ClientBehavior::default()
            })
            .hop(Hop::new(
                "s1",
                1_000,
                ServiceTime::Fixed(Duration::from_millis(1)),
            ))
            .hop(hop(2))
            .hop(hop(3))
            .hop(hop(4))
            .build()
            .unwrap();
        scenario.run();
        let counts = counts.lock().unwrap();
        Figures {
            requests: counts.len() as u64,
            calls: counts.values().sum(),
            max_per_request: counts.values().copied().max().unwrap_or(0),
        }
    }

    #[test]
    fn budgets_keep_the_bottom_service_within_1_1x_where_naive_retries_send_64x() {
        let backstop = run(DEFAULTS, 100.0, 0, 10);
        assert!(backstop.requests > 900, "{}", backstop.requests);
        assert!(
            backstop.amplification() <= 1.1,
            "backstop sent {:.3}x to the bottom service",
            backstop.amplification()
        );

        let naive = run(Client::Naive, 10.0, 0, 5);
        assert_eq!(
            naive.calls,
            64 * naive.requests,
            "naive: 4 × 4 × 4 attempts per request"
        );
        assert_eq!(naive.max_per_request, 64);
    }

    #[test]
    fn at_10_requests_per_second_an_outage_costs_at_most_1_1x_and_2_calls_a_request() {
        // 30 s healthy, so every budget holds what a live client's holds (earned tokens, the
        // floor's credit), then 60 s of outage at the bottom.
        let now = run(DEFAULTS, 10.0, 30, 60);
        assert!(now.requests > 500, "{}", now.requests);
        assert!(
            now.amplification() <= 1.1,
            "{:.3}x at the bottom",
            now.amplification()
        );
        assert!(now.max_per_request <= 2, "{}", now.max_per_request);
        // Failing from the start: the floor lends nothing to a client that never succeeded.
        let cold = run(DEFAULTS, 10.0, 0, 60);
        assert_eq!(cold.calls, cold.requests, "no retry at all");

        // Before: a fixed floor of 1/s at each level, and declined retries passed up unmarked.
        let before = run(BEFORE, 10.0, 30, 60);
        assert!(
            before.amplification() > 1.2,
            "{:.3}x at the bottom before",
            before.amplification()
        );
        assert!(before.max_per_request >= 3, "{}", before.max_per_request);
    }
}

mod decided {
    //! "Decided below": a retryable failure a lower retry layer saw goes up marked, retried or
    //! not, so the layers above never multiply it.

    use super::*;
    use backstop::retry::PropagateRetriedLayer;
    use tower::util::BoxCloneService;

    type Stack = BoxCloneService<Req, u32, BoxError>;

    /// Why the inner layer declines to retry.
    #[derive(Clone, Copy, Debug)]
    enum Decline {
        BudgetEmpty,
        NotIdempotent,
        NoTimeLeft,
        NoRetries,
    }

    /// An outer layer with a full budget over an inner one that declines, over a failing
    /// service: (requests at the bottom, retries the outer layer was granted, error marked).
    async fn two_layers(decline: Decline, inner_mark: MarkRetried) -> (usize, u64, bool) {
        let (svc, log) = scripted(Duration::from_millis(10), |_, _| Answer::Fail);
        let inner_budget = match decline {
            Decline::BudgetEmpty => budget_with(0.0),
            _ => budget_with(10.0),
        };
        let inner = RetryLayer::builder(inner_budget)
            .mark_retried(inner_mark)
            .max_retries(match decline {
                Decline::NoRetries => 0,
                _ => 1,
            })
            // Wants 2 s left to retry; the request has 1 s.
            .min_time_left(match decline {
                Decline::NoTimeLeft => Duration::from_secs(2),
                _ => Duration::from_millis(10),
            })
            .build()
            .unwrap();
        let outer_budget = budget_with(10.0);
        // The outer layer retries anything (a GET above a POST below, say).
        let outer = RetryLayer::builder(outer_budget.clone())
            .retry_non_idempotent()
            .build()
            .unwrap();
        let req = Req {
            idempotent: !matches!(decline, Decline::NotIdempotent),
            deadline: Some(Deadline::after(Duration::from_secs(1))),
            ..Req::new(1)
        };
        let err = outer
            .layer(inner.layer(svc))
            .oneshot(req)
            .await
            .unwrap_err();
        (
            sends(&log),
            outer_budget.stats().granted,
            AlreadyRetried::is_marked(err.as_ref()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_retry_goes_up_marked_and_is_not_retried_above() {
        for decline in [
            Decline::BudgetEmpty,
            Decline::NotIdempotent,
            Decline::NoTimeLeft,
            Decline::NoRetries,
        ] {
            assert_eq!(
                two_layers(decline, MarkRetried::default()).await,
                (1, 0, true),
                "{decline:?}: one call at the bottom, no retry above, the error marked"
            );
            // The old rule, marking only what was retried: the refusal below became a retry
            // above (which marks its own answer).
            assert_eq!(
                two_layers(decline, MarkRetried::AfterRetry).await,
                (2, 1, true),
                "{decline:?}, marked after a retry only"
            );
        }
    }

    type AnyBudget = Arc<dyn Budget + Send + Sync>;

    /// A budget that declines its first retry and pays for every one after: a floor that
    /// refills between the first attempt and a retry from above.
    #[derive(Default)]
    struct DeclinesFirst(std::sync::atomic::AtomicU32);

    impl Budget for DeclinesFirst {
        fn deposit(&self) {}
        fn try_withdraw(&self, _: RetryKind) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0
        }
        fn refund(&self, _: RetryKind) {}
    }

    /// Retry layers over a service that always fails, the innermost first in `budgets`, all
    /// marking as `mark` says.
    fn chain(budgets: Vec<AnyBudget>, mark: MarkRetried) -> (Stack, Log) {
        let (svc, log) = scripted(Duration::from_millis(5), |_, _| Answer::Fail);
        let mut stack = BoxCloneService::new(svc);
        for (level, budget) in budgets.into_iter().enumerate() {
            let layer = RetryLayer::builder(budget)
                .mark_retried(mark)
                .seed(level as u64)
                .build()
                .unwrap();
            stack = BoxCloneService::new(layer.layer(stack));
        }
        (stack, log)
    }

    fn full(depth: usize) -> Vec<AnyBudget> {
        (0..depth)
            .map(|_| Arc::new(budget_with(10.0)) as AnyBudget)
            .collect()
    }

    /// The most calls any one request made at the bottom.
    fn max_per_request(log: &Log) -> usize {
        let mut per: HashMap<u32, usize> = HashMap::new();
        for (id, _, _) in log.lock().unwrap().iter() {
            *per.entry(*id).or_default() += 1;
        }
        per.into_values().max().unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_reaches_the_bottom_at_most_twice_at_any_depth() {
        for depth in 1..=4 {
            // Every level can pay for every retry: only the marker bounds the chain.
            let (stack, log) = chain(full(depth), MarkRetried::default());
            for id in 0..10 {
                stack.clone().oneshot(Req::new(id)).await.unwrap_err();
            }
            assert_eq!(max_per_request(&log), 2, "depth {depth}");
            assert_eq!(
                sends(&log),
                20,
                "depth {depth}: the bottom layer retried each once"
            );

            // The bottom layer declines its first retry: nobody above retries.
            let mut budgets = full(depth);
            budgets[0] = Arc::new(DeclinesFirst::default());
            let (stack, log) = chain(budgets, MarkRetried::default());
            stack.clone().oneshot(Req::new(0)).await.unwrap_err();
            assert_eq!(max_per_request(&log), 1, "depth {depth}, bottom declined");
        }
        // The audit's chain, marking only what was retried: the bottom's refusal is retried by
        // the layer above, and this time the bottom pays: 3 calls for one request.
        let mut budgets = full(4);
        budgets[0] = Arc::new(DeclinesFirst::default());
        let (stack, log) = chain(budgets, MarkRetried::AfterRetry);
        stack.oneshot(Req::new(0)).await.unwrap_err();
        assert_eq!(max_per_request(&log), 3, "AfterRetry: 1 + 2 at the bottom");
    }

    /// A → B → C as three servers: B's handler calls C through its own retry client and
    /// answers 502 when C fails (a new response: nothing of C's is copied). With
    /// `propagate`, B's server stack has `PropagateRetriedLayer`.
    async fn a_b_c(propagate: bool) -> (u32, usize, bool) {
        let (c, c_log) = http_service(500, false);
        let b_client = RetryLayer::builder(budget_with(10.0))
            .classifier(HttpClassifier)
            .build()
            .unwrap()
            .layer(c);
        let b_handler = tower::service_fn(move |req: http::Request<()>| {
            let client = b_client.clone();
            async move {
                let from_c = client.oneshot(req).await?;
                let status = if from_c.status().is_server_error() {
                    502
                } else {
                    200
                };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
            }
        });
        let b_calls = Arc::new(Mutex::new(0));
        let counted = b_calls.clone();
        let b_handler = b_handler.map_request(move |r| {
            *counted.lock().unwrap() += 1;
            r
        });
        let b: BoxCloneService<_, _, BoxError> = if propagate {
            BoxCloneService::new(PropagateRetriedLayer::new(HttpClassifier).layer(b_handler))
        } else {
            BoxCloneService::new(b_handler)
        };
        let a_client = RetryLayer::builder(budget_with(10.0))
            .classifier(HttpClassifier)
            .build()
            .unwrap()
            .layer(b);
        let res = a_client.oneshot(idempotent_get()).await.unwrap();
        assert_eq!(res.status(), 502);
        let (b, c) = (*b_calls.lock().unwrap(), sends_http(&c_log));
        (b, c, res.headers().contains_key(RETRIED_HEADER))
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_carries_the_mark_to_its_callers() {
        assert_eq!(
            a_b_c(true).await,
            (1, 2, true),
            "B retried C once; B's 502 went up marked and A did not retry"
        );
        assert_eq!(
            a_b_c(false).await,
            (2, 4, true),
            "without the layer, A retried B's unmarked 502 (its own retry marks the answer)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_marks_nothing_when_its_calls_succeeded_or_it_made_none() {
        // A handler that fails on its own, with no call below: its 500 is A's to retry.
        let (b, b_log) = http_service(500, false);
        let b = PropagateRetriedLayer::new(HttpClassifier).layer(b);
        let res = b.oneshot(idempotent_get()).await.unwrap();
        assert!(!res.headers().contains_key(RETRIED_HEADER));
        assert_eq!(sends_http(&b_log), 1);

        // A handler whose call below answered 200 or 429 (an overload, never retried, so
        // nothing was decided below) and that fails anyway.
        for c_status in [200, 429] {
            let (c, _) = http_service(c_status, true);
            let client = RetryLayer::builder(budget_with(10.0))
                .classifier(HttpClassifier)
                .build()
                .unwrap()
                .layer(c);
            let handler = tower::service_fn(move |req: http::Request<()>| {
                let client = client.clone();
                async move {
                    client.oneshot(req).await?;
                    Ok::<_, BoxError>(http::Response::builder().status(500).body(()).unwrap())
                }
            });
            let b = PropagateRetriedLayer::new(HttpClassifier).layer(handler);
            let res = b.oneshot(idempotent_get()).await.unwrap();
            assert_eq!(res.status(), 500);
            assert!(
                !res.headers().contains_key(RETRIED_HEADER),
                "C answered {c_status}"
            );
        }
    }
}
