//! The client-wide token bucket: refill, fairness, cancellation, layer modes, sharing, metrics,
//! run-time changes, properties, a multi-thread stress test and the adaptive scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::classify::Outcome;
use backstop::timeout::{Deadline, HasDeadline};
use backstop::token_bucket::{AdaptiveRate, Clock, TokenBucket, TokenBucketLayer};
use backstop::{BoxError, OverloadReason, Overloaded, find_overload};
use futures::FutureExt;
use proptest::prelude::*;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn reason(err: &BoxError) -> OverloadReason {
    find_overload(err.as_ref()).expect("an Overloaded").reason()
}

#[tokio::test(start_paused = true)]
async fn refills_at_the_rate_up_to_the_capacity() {
    let bucket = TokenBucket::new("t", 5.0, 10.0).unwrap();
    assert_eq!(bucket.tokens(), 5.0);
    assert!(bucket.try_acquire(5));
    assert!(!bucket.try_acquire(1));
    assert_eq!(bucket.time_until(1), Some(Duration::from_millis(100)));
    advance(Duration::from_millis(99)).await;
    assert!(!bucket.try_acquire(1));
    advance(Duration::from_millis(1)).await;
    assert!(bucket.try_acquire(1));
    advance(Duration::from_secs(60)).await;
    assert_eq!(bucket.tokens(), 5.0, "never above the capacity");
}

#[tokio::test(start_paused = true)]
async fn rate_and_capacity_change_at_run_time() {
    let bucket = TokenBucket::new("t", 10.0, 1.0).unwrap();
    assert!(bucket.try_acquire(10));
    advance(Duration::from_millis(500)).await; // 0.5 token at 1/s
    bucket.set_rate(100.0);
    assert_eq!(bucket.rate(), Some(100.0));
    advance(Duration::from_millis(10)).await; // + 1 token at 100/s
    assert!(bucket.try_acquire(1));
    assert!((bucket.tokens() - 0.5).abs() < 0.01, "{}", bucket.tokens());
    bucket.set_capacity(2.0);
    advance(Duration::from_secs(1)).await;
    assert_eq!(bucket.tokens(), 2.0);
    bucket.set_capacity(0.5);
    assert_eq!(
        bucket.tokens(),
        0.5,
        "tokens above a smaller capacity are dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_for_its_tokens() {
    let bucket = TokenBucket::new("t", 4.0, 2.0).unwrap();
    assert!(bucket.try_acquire(4));
    let start = Instant::now();
    bucket.acquire(3).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert_eq!(bucket.tokens(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_large_waiter_is_not_starved_by_small_ones() {
    let bucket = TokenBucket::new("t", 10.0, 10.0).unwrap();
    assert!(bucket.try_acquire(10));
    let order = Arc::new(Mutex::new(Vec::new()));
    let spawn = |n: u32, tag: &'static str| {
        let (bucket, order) = (bucket.clone(), order.clone());
        tokio::spawn(async move {
            bucket.acquire(n).await.unwrap();
            order.lock().unwrap().push(tag);
        })
    };
    let big = spawn(10, "big");
    tokio::task::yield_now().await;
    let smalls: Vec<_> = (0..5).map(|_| spawn(1, "small")).collect();
    tokio::task::yield_now().await;
    // Nobody may jump the line, not even try_acquire once a token is there.
    advance(Duration::from_millis(100)).await;
    assert!(
        !bucket.try_acquire(1),
        "try_acquire must not take from a waiting line"
    );
    big.await.unwrap();
    for s in smalls {
        s.await.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order[0], "big");
    assert_eq!(order.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_takes_nothing_and_leaves_the_line() {
    let bucket = TokenBucket::new("t", 10.0, 10.0).unwrap();
    assert!(bucket.try_acquire(10));
    let mut head = Box::pin(bucket.acquire(8));
    assert!((&mut head).now_or_never().is_none());
    let behind = tokio::spawn({
        let bucket = bucket.clone();
        async move {
            let start = Instant::now();
            bucket.acquire(2).await.unwrap();
            start.elapsed()
        }
    });
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    drop(head); // the head leaves before it got its 8 tokens
    let waited = behind.await.unwrap();
    assert_eq!(
        waited,
        Duration::from_millis(200),
        "the next waiter moves up at once"
    );
    advance(Duration::from_secs(2)).await;
    assert_eq!(
        bucket.tokens(),
        10.0,
        "nothing was held back for the dropped waiter"
    );
}

#[tokio::test(start_paused = true)]
async fn more_than_the_capacity_is_refused_at_once() {
    let bucket = TokenBucket::new("t", 3.0, 1.0).unwrap();
    let err = bucket.acquire(4).await.unwrap_err();
    assert_eq!(err.reason(), OverloadReason::RateLimited);
    assert_eq!(bucket.time_until(4), None);
}

#[tokio::test(start_paused = true)]
async fn a_rate_change_wakes_the_head_of_the_line() {
    let bucket = TokenBucket::new("t", 5.0, 0.0).unwrap();
    assert!(bucket.try_acquire(5));
    let waiter = tokio::spawn({
        let bucket = bucket.clone();
        async move { bucket.acquire(1).await }
    });
    advance(Duration::from_secs(10)).await;
    assert!(!waiter.is_finished(), "rate 0: nothing comes");
    bucket.set_rate(1000.0);
    advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert!(waiter.await.unwrap().is_ok());
}

fn echo() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|x: u32| async move { Ok::<_, BoxError>(x) })
}

/// An inner service that is not ready for its first `not_ready` polls, then answers its
/// readiness with `ready` (calls counted).
#[derive(Clone)]
struct Slow {
    not_ready: Arc<AtomicU64>,
    fail: bool,
    calls: Arc<AtomicU64>,
}

impl Service<u32> for Slow {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.not_ready.load(Ordering::SeqCst) > 0 {
            self.not_ready.fetch_sub(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.fail {
            return std::task::Poll::Ready(Err(Overloaded::new(OverloadReason::Throttled).into()));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(x))
    }
}

fn slow(not_ready: u64, fail: bool) -> (Slow, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let svc = Slow {
        not_ready: Arc::new(AtomicU64::new(not_ready)),
        fail,
        calls: calls.clone(),
    };
    (svc, calls)
}

/// The layer takes its token, then waits for the inner service to be ready: a slow service
/// costs one token and one call; a readiness error is returned without a call and counts as
/// the server's answer (an overload cuts an adaptive rate); a future dropped while the inner
/// service is not ready spends its token and never calls.
#[tokio::test(start_paused = true)]
async fn the_layer_readies_the_inner_service_after_the_token() {
    let bucket = TokenBucket::builder("readying")
        .capacity(5.0)
        .rate(0.0)
        .build()
        .unwrap();
    let (inner, calls) = slow(2, false);
    let svc = TokenBucketLayer::new(bucket.clone()).layer(inner);
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!((bucket.tokens(), calls.load(Ordering::SeqCst)), (4.0, 1));

    let (inner, calls) = slow(1, false);
    let mut svc = TokenBucketLayer::new(bucket.clone()).layer(inner);
    let pending = svc.ready().await.unwrap().call(1);
    assert!(
        pending.now_or_never().is_none(),
        "the inner service is not ready yet"
    );
    assert_eq!((bucket.tokens(), calls.load(Ordering::SeqCst)), (3.0, 0));

    let adaptive = TokenBucket::builder("readying-adaptive")
        .adaptive(AdaptiveRate::aws().build().unwrap())
        .build()
        .unwrap();
    // Readiness overloads 10 ms apart: the first few carry no send rate to cut from yet.
    for _ in 0..6 {
        let (inner, calls) = slow(0, true);
        let svc = TokenBucketLayer::new(adaptive.clone()).layer(inner);
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        if adaptive.rate().is_none() {
            assert_eq!(reason(&err), OverloadReason::Throttled);
        }
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        adaptive.rate().is_some(),
        "the readiness overloads cut the rate"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_fast_layer_refuses_with_rate_limited_and_a_retry_hint() {
    let bucket = TokenBucket::new("t", 2.0, 4.0).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(TokenBucketLayer::new(bucket.clone()))
        .service(echo());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
    let overload = find_overload(err.as_ref()).unwrap();
    assert_eq!(overload.reason(), OverloadReason::RateLimited);
    // 4/s: the next token is due in 250 ms (within the bucket's 1 ms clock).
    let after = overload.retry_after().unwrap();
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(251),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_of_a_service_share_one_bucket() {
    let bucket = TokenBucket::new("t", 3.0, 0.0).unwrap();
    let svc = ServiceBuilder::new()
        .layer(TokenBucketLayer::new(bucket.clone()))
        .service(echo());
    let mut ok = 0;
    for i in 0..6 {
        let mut clone = svc.clone();
        if clone.ready().await.unwrap().call(i).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 3, "six clones, one bucket of 3");
    assert_eq!(bucket.tokens(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn waiting_layer_waits_up_to_its_bound() {
    let bucket = TokenBucket::new("t", 1.0, 5.0).unwrap(); // one token per 200 ms
    let layer = TokenBucketLayer::builder(bucket.clone())
        .wait_up_to(Duration::from_millis(300))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(echo());
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let r = svc.ready().await?.call(i).await;
                Ok::<_, BoxError>((r, start.elapsed()))
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap().unwrap());
    }
    assert_eq!(results[0].0.as_ref().unwrap(), &0);
    assert_eq!(results[0].1, Duration::ZERO);
    assert_eq!(results[1].0.as_ref().unwrap(), &1);
    assert_eq!(results[1].1, Duration::from_millis(200));
    let err = results[2].0.as_ref().unwrap_err();
    assert_eq!(reason(err), OverloadReason::RateLimited);
    assert_eq!(
        results[2].1,
        Duration::from_millis(300),
        "gave up at its bound"
    );
    advance(Duration::from_millis(200)).await;
    assert_eq!(bucket.tokens(), 1.0, "the waiter that gave up took nothing");
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn waiting_layer_never_waits_past_the_deadline() {
    let bucket = TokenBucket::new("t", 1.0, 1.0).unwrap();
    assert!(bucket.try_acquire(1));
    let layer = TokenBucketLayer::builder(bucket)
        .wait_up_to(Duration::from_secs(10))
        .wait_until_deadline()
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(()) });
    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(Duration::from_millis(150)));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(reason(&err), OverloadReason::RateLimited);
    assert_eq!(start.elapsed(), Duration::from_millis(150));
}

#[test]
fn builders_name_bad_fields() {
    let field = |r: Result<TokenBucket, backstop::ConfigError>| r.unwrap_err().field();
    assert_eq!(field(TokenBucket::new("t", 0.0, 1.0)), "capacity");
    assert_eq!(field(TokenBucket::new("t", 1.0, -1.0)), "rate");
    assert_eq!(field(TokenBucket::new("t", 1.0, f64::NAN)), "rate");
    assert_eq!(
        field(
            TokenBucket::builder("t")
                .capacity(2.0)
                .initial_tokens(3.0)
                .build()
        ),
        "initial_tokens"
    );
    let bucket = TokenBucket::new("t", 1.0, 1.0).unwrap();
    let err = TokenBucketLayer::builder(bucket)
        .wait_up_to(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_wait");
}

#[test]
fn gauges_and_counters_are_registered_and_move() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let bucket = TokenBucket::new("m", 2.0, 0.0).unwrap();
        assert!(bucket.try_acquire(1));
        assert!(bucket.try_acquire(1));
        assert!(!bucket.try_acquire(1));
        // Grants and refusals are published in batches (every 100 ms); at once on request.
        bucket.publish();
    });
    let values: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    let get = |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    use backstop::metrics::names;
    assert_eq!(get(names::TOKEN_BUCKET_ACQUIRED), &DebugValue::Counter(2));
    assert_eq!(get(names::TOKEN_BUCKET_DENIED), &DebugValue::Counter(1));
    assert_eq!(
        get(names::TOKEN_BUCKET_TOKENS),
        &DebugValue::Gauge(0.0.into())
    );
    assert_eq!(
        get(names::TOKEN_BUCKET_RATE),
        &DebugValue::Gauge(0.0.into())
    );
}

#[tokio::test(start_paused = true)]
async fn adaptive_is_unlimited_until_the_first_throttle() {
    let bucket = TokenBucket::builder("a")
        .adaptive(AdaptiveRate::aws().build().unwrap())
        .build()
        .unwrap();
    assert_eq!(bucket.rate(), None);
    assert!((0..10_000).all(|_| bucket.try_acquire(1)));
    for _ in 0..100 {
        bucket.on_outcome(Outcome::Success, Instant::now());
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(
        bucket.rate(),
        None,
        "successes alone never switch the limit on"
    );
    bucket.on_outcome(Outcome::Overload(None), Instant::now());
    let rate = bucket.rate().expect("limited after a throttle");
    let measured = bucket.measured_rate().unwrap();
    assert!(
        (rate - 0.7 * measured).abs() < 1e-9,
        "rate {rate} measured {measured}"
    );
    assert!(!bucket.try_acquire(1), "starts empty after a throttle");
}

#[tokio::test(start_paused = true)]
async fn adaptive_can_start_from_a_configured_rate() {
    let bucket = TokenBucket::builder("a")
        .adaptive(
            AdaptiveRate::aws()
                .initial_rate(20.0)
                .max_rate(25.0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(bucket.rate(), Some(20.0));
    assert_eq!(bucket.capacity(), 20.0);
    // Feed successes at 30/s for a while: the rate climbs but never past max_rate.
    for _ in 0..300 {
        if bucket.try_acquire(1) {
            bucket.on_outcome(Outcome::Success, Instant::now());
        }
        advance(Duration::from_millis(33)).await;
    }
    let rate = bucket.rate().unwrap();
    assert!(rate > 20.0 && rate <= 25.0, "{rate}");
}

/// Through the layer, against a server answering after one round trip of 100 ms: 50 requests
/// sent within that round trip all come back throttled, and the rate is cut once for all of
/// them; a throttle of a request sent after that cut cuts again.
#[tokio::test(start_paused = true)]
async fn adaptive_cuts_once_per_round_trip() {
    const RTT: Duration = Duration::from_millis(100);
    let throttle = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let throttle = throttle.clone();
        tower::service_fn(move |_: ()| {
            let throttled = throttle.load(Ordering::SeqCst);
            async move {
                tokio::time::sleep(RTT).await;
                if throttled {
                    Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let bucket = TokenBucket::builder("rtt")
        .adaptive(AdaptiveRate::aws().build().unwrap())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(TokenBucketLayer::new(bucket.clone()))
        .service(server);
    // The rate seen right after each answer, in the order the answers came.
    let rates = Arc::new(Mutex::new(Vec::new()));
    let send = |client: &_| {
        let mut svc: tower::util::BoxCloneService<(), (), BoxError> =
            tower::util::BoxCloneService::clone(client);
        let (bucket, rates) = (bucket.clone(), rates.clone());
        tokio::spawn(async move {
            let result = svc.ready().await?.call(()).await;
            rates.lock().unwrap().push(bucket.rate());
            result
        })
    };
    let client = tower::util::BoxCloneService::new(client);

    // 3 s of successes at 100/s: the measured send rate settles near 100/s; still unlimited.
    for _ in 0..300 {
        send(&client);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(RTT * 2).await;
    assert_eq!(bucket.rate(), None);
    rates.lock().unwrap().clear();

    // The server starts refusing; 50 requests go out within one round trip.
    throttle.store(true, Ordering::SeqCst);
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.push(send(&client));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for answer in burst {
        let err = answer.await.unwrap().unwrap_err();
        assert_eq!(
            find_overload(&*err).unwrap().reason(),
            OverloadReason::Throttled
        );
    }
    let cuts = |rates: &[Option<f64>]| {
        let mut previous = f64::INFINITY;
        let mut cuts = 0;
        for rate in rates.iter().map(|r| r.unwrap_or(f64::INFINITY)) {
            if rate < previous - 1e-9 {
                cuts += 1;
            }
            previous = rate;
        }
        cuts
    };
    let seen = rates.lock().unwrap().clone();
    assert_eq!(seen.len(), 50);
    assert_eq!(cuts(&seen), 1, "one cut for one round trip: {seen:?}");
    let first = seen[0].expect("limited after the first throttle");
    let measured = bucket.measured_rate().unwrap();
    assert!(
        first > 0.6 * 90.0 && first < 0.8 * 110.0,
        "cut to {first}, about 0.7 x 100/s"
    );
    assert!(
        measured > 90.0,
        "the ignored throttles still count: {measured}"
    );

    // A request sent after the cut (a token has refilled by then) is a new congestion event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = send(&client).await.unwrap().unwrap_err();
    assert_eq!(
        find_overload(&*err).unwrap().reason(),
        OverloadReason::Throttled
    );
    let seen = rates.lock().unwrap().clone();
    assert_eq!(cuts(&seen), 2, "{seen:?}");
    let second = seen.last().unwrap().unwrap();
    assert!(
        second < 0.75 * first,
        "second cut to {second}, first {first}"
    );
}

// ---- properties ----

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Tokens stay in [0, capacity], and over every interval [t_i, t_j] the tokens granted are at
    /// most capacity + rate × (t_j − t_i + 1 ms).
    #[test]
    fn grants_never_exceed_capacity_plus_rate_times_time(
        capacity in 1u32..50,
        rate in 0.0f64..500.0,
        ops in proptest::collection::vec((0u64..300, 1u32..8), 1..120),
    ) {
        paused_runtime().block_on(async {
            let bucket = TokenBucket::new("p", f64::from(capacity), rate).unwrap();
            let start = Instant::now();
            let mut grants: Vec<(f64, u32)> = Vec::new();
            for (wait_ms, n) in ops {
                advance(Duration::from_millis(wait_ms)).await;
                let t = bucket.tokens();
                prop_assert!((0.0..=f64::from(capacity)).contains(&t), "tokens {t}");
                if bucket.try_acquire(n) {
                    grants.push((start.elapsed().as_secs_f64(), n));
                }
                let t = bucket.tokens();
                prop_assert!((0.0..=f64::from(capacity)).contains(&t), "tokens {t}");
            }
            for i in 0..grants.len() {
                let mut sum = 0u64;
                for j in i..grants.len() {
                    sum += u64::from(grants[j].1);
                    let span = grants[j].0 - grants[i].0;
                    let bound = f64::from(capacity) + rate * (span + 0.001);
                    prop_assert!(sum as f64 <= bound + 1e-9, "{sum} > {bound}");
                }
            }
            Ok(())
        })?;
    }

    /// Waiters dropped at random moments take nothing: once everyone has finished or left and
    /// time has passed, the bucket is full again, and the granted tokens respect the bound.
    #[test]
    fn dropped_waiters_give_everything_back(
        sizes in proptest::collection::vec((1u32..6, 0u64..400, proptest::bool::ANY), 1..12),
    ) {
        paused_runtime().block_on(async {
            let (capacity, rate) = (6.0, 10.0);
            let bucket = TokenBucket::new("p", capacity, rate).unwrap();
            let granted = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (n, patience_ms, gives_up) in sizes {
                let (bucket, granted) = (bucket.clone(), granted.clone());
                tasks.push(tokio::spawn(async move {
                    let wait = bucket.acquire(n);
                    if gives_up {
                        if tokio::time::timeout(Duration::from_millis(patience_ms), wait).await.is_ok() {
                            granted.fetch_add(u64::from(n), Ordering::Relaxed);
                        }
                    } else {
                        wait.await.unwrap();
                        granted.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let span = start.elapsed().as_secs_f64();
            let g = granted.load(Ordering::Relaxed) as f64;
            prop_assert!(g <= capacity + rate * (span + 0.001), "{g} in {span}s");
            advance(Duration::from_secs(1)).await;
            prop_assert_eq!(bucket.tokens(), capacity);
            Ok(())
        })?;
    }
}

/// Several OS threads hammer one bucket with real atomics. With rate 0 the bound is exact: the
/// grants must equal the capacity, no more (no double grant) and no less (no lost token).
#[test]
fn threads_hammering_one_bucket_get_exactly_the_capacity() {
    let capacity = 200_000u64;
    let bucket = TokenBucket::new("stress", capacity as f64, 0.0).unwrap();
    let threads = 4;
    let per_thread: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let bucket = bucket.clone();
                s.spawn(move || {
                    let mut got = 0u64;
                    let mut misses = 0;
                    while misses < 1000 {
                        if bucket.try_acquire(1) {
                            got += 1;
                        } else {
                            misses += 1;
                        }
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(per_thread.iter().sum::<u64>(), capacity);
    assert_eq!(bucket.tokens(), 0.0);
}

/// The same with a refill, on the real clock: the grants never exceed capacity + rate × the
/// elapsed time, measured generously (from before the bucket was built to after every thread
/// stopped), so a slow machine can only make the check easier. On both clocks: tokio's, and the
/// CPU's counter.
#[test]
fn threads_with_a_refill_never_beat_the_bound() {
    for clock in [Clock::tokio(), Clock::cpu_counter()] {
        let (capacity, rate) = (1_000.0, 50_000.0);
        let start = std::time::Instant::now();
        let bucket = TokenBucket::builder("stress")
            .capacity(capacity)
            .rate(rate)
            .clock(clock.clone())
            .build()
            .unwrap();
        let run_for = Duration::from_millis(150);
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let bucket = bucket.clone();
                    s.spawn(move || {
                        let mut got = 0u64;
                        while start.elapsed() < run_for {
                            for _ in 0..64 {
                                got += u64::from(bucket.try_acquire(1));
                            }
                        }
                        got
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let bound = capacity + rate * (elapsed + 0.001);
        assert!(granted as f64 <= bound, "{clock:?}: {granted} > {bound}");
        assert!(
            granted as f64 >= capacity,
            "{clock:?}: the initial capacity is always there"
        );
    }
}

/// The counter clock keeps real time: after the OS clock has seen 10 ms pass, the bucket has
/// refilled what 10 ms pay for, give or take the milliseconds read on either side.
#[test]
fn the_counter_clock_refills_in_real_time() {
    let rate = 1_000.0; // one token a millisecond
    let before = std::time::Instant::now();
    let bucket = TokenBucket::builder("counter")
        .capacity(1_000.0)
        .rate(rate)
        .initial_tokens(0.0)
        .clock(Clock::cpu_counter())
        .build()
        .unwrap();
    let built = std::time::Instant::now();
    while built.elapsed() < Duration::from_millis(10) {
        std::hint::spin_loop();
    }
    let read_from = built.elapsed().as_secs_f64() * 1000.0;
    let tokens = bucket.tokens();
    let read_to = before.elapsed().as_secs_f64() * 1000.0;
    assert!(
        tokens >= (read_from - 1.0).floor() && tokens <= read_to.ceil(),
        "{tokens} tokens, the clock read between {read_from:.1} and {read_to:.1} ms"
    );
}

// ---- the adaptive scenario ----

/// A server admitting 100 requests/s (a plain f64 bucket, burst 10) and throttling the rest;
/// the client offers 300/s through the adaptive bucket. Returns requests reaching the server per
/// simulated second.
async fn adaptive_run(seconds: usize) -> Vec<u64> {
    let start = Instant::now();
    let server_state = Arc::new(Mutex::new((10.0f64, start)));
    let sent = Arc::new(Mutex::new(vec![0u64; seconds]));
    let server = {
        let sent = sent.clone();
        tower::service_fn(move |_: ()| {
            let now = Instant::now();
            let admitted = {
                let mut s = server_state.lock().unwrap();
                s.0 = (s.0 + (now - s.1).as_secs_f64() * 100.0).min(10.0);
                s.1 = now;
                let ok = s.0 >= 1.0;
                if ok {
                    s.0 -= 1.0;
                }
                ok
            };
            if let Some(n) = sent
                .lock()
                .unwrap()
                .get_mut((now - start).as_secs() as usize)
            {
                *n += 1;
            }
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if admitted {
                    Ok(())
                } else {
                    Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
                }
            }
        })
    };
    let bucket = TokenBucket::builder("client")
        .adaptive(AdaptiveRate::aws().build().unwrap())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(TokenBucketLayer::new(bucket))
        .service(server);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / 300.0));
    let end = start + Duration::from_secs(seconds as u64);
    while tick.tick().await < end {
        let mut svc = client.clone();
        tokio::spawn(async move {
            let _ = svc.ready().await?.call(()).await;
            Ok::<_, BoxError>(())
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    sent.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn adaptive_rate_settles_near_what_the_server_admits() {
    let sent = adaptive_run(45).await;
    let near = |n: u64| (n as f64 - 100.0).abs() <= 10.0;
    let converged = sent.iter().position(|&n| near(n)).expect("converges");
    assert!(
        converged < 10,
        "1-second send rate near 100/s only at {}s: {sent:?}",
        converged + 1
    );
    for (s, &n) in sent.iter().enumerate().skip(converged + 1) {
        assert!((65..=115).contains(&n), "second {}: {n}/s; {sent:?}", s + 1);
    }
    let last = &sent[sent.len() - 30..];
    let mean = last.iter().sum::<u64>() as f64 / 30.0;
    assert!(
        (mean - 100.0).abs() <= 10.0,
        "mean over the last 30 s {mean}"
    );
}

// ---- retry quota ----

#[derive(Clone)]
struct Get;
impl HasDeadline for Get {
    fn deadline(&self) -> Option<Deadline> {
        None
    }
    fn set_deadline(&mut self, _: Deadline) {}
}
impl backstop::retry::RetryRequest for Get {
    fn is_idempotent(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn retry_quota_charges_like_aws_standard_mode() {
    use backstop::retry::{Budget, RetryKind, RetryLayer};
    let quota = TokenBucket::retry_quota("quota");
    assert_eq!((quota.capacity(), quota.tokens()), (500.0, 500.0));
    // Withdraw and refund by kind.
    assert!(quota.try_withdraw(RetryKind::AfterTimeout));
    assert_eq!(quota.tokens(), 490.0);
    quota.refund(RetryKind::AfterTimeout);
    assert!(quota.try_withdraw(RetryKind::AfterError));
    assert_eq!(quota.tokens(), 495.0);
    quota.deposit();
    quota.deposit();
    assert_eq!(quota.tokens(), 497.0);
    quota.deposit();
    quota.deposit();
    assert_eq!(quota.tokens(), 499.0);
    quota.deposit();
    quota.deposit();
    assert_eq!(quota.tokens(), 500.0, "never above the capacity");
    advance(Duration::from_secs(3600)).await;
    assert_eq!(quota.tokens(), 500.0);

    // Through the retry layer: a service that always fails gets 500 / 5 = 100 retries in all.
    let attempts = Arc::new(AtomicU64::new(0));
    let failing = {
        let attempts = attempts.clone();
        tower::service_fn(move |_: Get| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), BoxError>("reset".into()) }
        })
    };
    let mut client = ServiceBuilder::new()
        .layer(RetryLayer::new(quota.clone()))
        .service(failing);
    for _ in 0..300 {
        let _ = client.ready().await.unwrap().call(Get).await;
    }
    assert_eq!(attempts.load(Ordering::Relaxed), 300 + 100);
    assert_eq!(quota.tokens(), 0.0);
}
