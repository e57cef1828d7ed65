//! The client throttle: a client refuses locally so a refusing server sees about K × accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use backstop::client_throttle::{ClientThrottle, ClientThrottleLayer};
use backstop::{BoxError, OverloadReason, Overloaded, find_overload};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A server that accepts at most one request every `gap` and refuses the rest as overloaded;
/// it counts what reaches it and what it accepts. `open` makes it accept everything.
#[derive(Clone)]
struct Server {
    gap: Duration,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
    reached: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicBool>,
}

impl Server {
    fn new(gap: Duration) -> Self {
        Server {
            gap,
            last: Default::default(),
            reached: Default::default(),
            accepted: Default::default(),
            open: Default::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<(), Response = (), Error = BoxError, Future: Send + 'static> + Clone + use<>
    {
        let s = self.clone();
        tower::service_fn(move |_: ()| {
            s.reached.fetch_add(1, Relaxed);
            let now = Instant::now();
            let mut last = s.last.lock().unwrap();
            let accept =
                s.open.load(Relaxed) || last.is_none_or(|l| now.duration_since(l) >= s.gap);
            if accept {
                *last = Some(now);
                s.accepted.fetch_add(1, Relaxed);
            }
            async move {
                if accept {
                    Ok(())
                } else {
                    Err(Overloaded::new(OverloadReason::Throttled).into())
                }
            }
        })
    }
}

/// Sends one request every `every` for `for_`, waiting for each answer.
async fn drive<S>(svc: &mut S, every: Duration, for_: Duration) -> (u64, u64)
where
    S: Service<(), Response = (), Error = BoxError>,
{
    let (mut ok, mut local) = (0, 0);
    let end = Instant::now() + for_;
    while Instant::now() < end {
        match svc.ready().await.unwrap().call(()).await {
            Ok(()) => ok += 1,
            Err(e) => {
                if find_overload(e.as_ref()).unwrap().reason() == OverloadReason::ClientThrottled {
                    local += 1;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
    (ok, local)
}

#[tokio::test(start_paused = true)]
async fn a_server_that_accepts_everything_is_never_throttled() {
    let server = Server::new(Duration::ZERO);
    let throttle = ClientThrottle::builder("t").seed(1).build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ClientThrottleLayer::new(throttle.clone()))
        .service(server.service());
    let (ok, local) = drive(&mut svc, Duration::from_millis(1), Duration::from_secs(5)).await;
    assert_eq!(local, 0);
    assert_eq!(ok, server.reached.load(Relaxed));
    assert_eq!(throttle.counts(), (ok, ok));
    assert_eq!(throttle.refusal_probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn the_server_sees_about_k_times_what_it_accepts() {
    for k in [1.5, 2.0, 3.0] {
        // 1,000 requests/s offered, 100/s accepted: 10×.
        let server = Server::new(Duration::from_millis(10));
        let throttle = ClientThrottle::builder("t")
            .k(k)
            .window(Duration::from_secs(10))
            .seed(3)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(ClientThrottleLayer::new(throttle.clone()))
            .service(server.service());
        // One window to settle, then measure over two more.
        drive(&mut svc, Duration::from_millis(1), Duration::from_secs(10)).await;
        let (r0, a0) = (server.reached.load(Relaxed), server.accepted.load(Relaxed));
        let (ok, local) = drive(&mut svc, Duration::from_millis(1), Duration::from_secs(20)).await;
        let reached = server.reached.load(Relaxed) - r0;
        let accepted = server.accepted.load(Relaxed) - a0;
        assert_eq!(ok, accepted);
        let ratio = reached as f64 / accepted as f64;
        assert!(
            (ratio - k).abs() <= 0.15 * k,
            "k = {k}: the server saw {ratio:.2} × what it accepted ({reached} / {accepted})"
        );
        // Without the throttle it would have seen every one of the ~20,000 requests.
        assert!(
            local > 20_000 - (k * 1.2 * accepted as f64) as u64,
            "{local}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_local_refusal_never_reaches_the_server_and_the_window_forgets() {
    let server = Server::new(Duration::from_secs(3600)); // accepts one, then refuses
    let throttle = ClientThrottle::builder("t")
        .window(Duration::from_secs(12))
        .seed(5)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ClientThrottleLayer::new(throttle.clone()))
        .service(server.service());
    let (_, local) = drive(&mut svc, Duration::from_millis(10), Duration::from_secs(6)).await;
    let (requests, accepts) = throttle.counts();
    assert_eq!(requests, 600);
    assert_eq!(accepts, 1);
    assert_eq!(server.reached.load(Relaxed) + local, requests);
    assert!(throttle.refusal_probability() > 0.99);

    // The server recovers; after one window without traffic the old refusals are gone.
    server.open.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(throttle.counts(), (0, 0));
    let (ok, local) = drive(&mut svc, Duration::from_millis(10), Duration::from_secs(1)).await;
    assert_eq!((ok, local), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_counts_as_accepted() {
    let throttle = ClientThrottle::builder("t").seed(1).build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ClientThrottleLayer::new(throttle.clone()))
        .service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(())
        });
    let fut = svc.ready().await.unwrap().call(());
    assert_eq!(throttle.counts(), (1, 0));
    drop(fut);
    assert_eq!(throttle.counts(), (1, 1));
}

#[test]
fn invalid_values_are_refused_at_build() {
    let err = ClientThrottle::builder("t").k(0.5).build().unwrap_err();
    assert_eq!(err.field(), "k");
    assert!(err.expected().contains("[1, 100]"));
    let err = ClientThrottle::builder("t")
        .k(f64::NAN)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "k");
    let err = ClientThrottle::builder("t")
        .window(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "window");
    let err = ClientThrottle::builder("t")
        .window(Duration::from_secs(7200))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "window");
}
