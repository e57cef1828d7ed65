//! Stacks of backstop layers over a transport whose error is `BoxError` can be called inside
//! `tokio::spawn`. A response future that names its inner future through the inner service
//! (`S::Future`) makes rustc prove the inner service's bounds with erased lifetimes when it
//! checks the spawned task is `Send`, and `BoxError: Into<BoxError>` fails there
//! ("implementation of `From` is not general enough", rust-lang/rust#64552). These tests are
//! compile-time checks first: before the fix this file did not build.

use std::num::NonZeroU32;
use std::time::Duration;

use backstop::BoxError;
use backstop::backpressure::BackpressureLayer;
use backstop::classify::HttpClassifier;
use backstop::hedge::HedgeLayer;
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::pid::{AdmissionController, AdmissionLayer, QueueDelay};
use backstop::retry::{RetryBudget, RetryLayer};
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
use backstop::timeout::TimeoutLayer;
use backstop::token_bucket::{TokenBucket, TokenBucketLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

type Request = http::Request<String>;
type Response = http::Response<String>;

/// The transport, as a plain `service_fn` (its concrete type matters: hidden behind
/// `impl Service` the failure does not show).
macro_rules! transport {
    () => {
        tower::service_fn(|_req: Request| async {
            Ok::<_, BoxError>(http::Response::new(String::new()))
        })
    };
}

/// Calls `svc` once on a spawned task.
async fn spawned<S>(svc: S) -> Result<Response, BoxError>
where
    S: Service<Request, Response = Response, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(async move { svc.oneshot(http::Request::new(String::new())).await })
        .await
        .expect("the task ran")
}

#[tokio::test]
async fn the_readme_client_stack_runs_in_a_spawned_task() {
    let meter = LittleMeter::builder("spawn_client").build().unwrap();
    let budget = RetryBudget::builder("spawn_client").build().unwrap();
    let bucket = TokenBucket::builder("spawn_client").build().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(LittleLayer::new(meter).with_classifier(HttpClassifier))
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .layer(
            RetryLayer::builder(budget)
                .classifier(HttpClassifier)
                .build()
                .unwrap(),
        )
        .layer(HedgeLayer::builder("hedge").build().unwrap())
        .layer(
            TokenBucketLayer::builder(bucket)
                .classifier(HttpClassifier)
                .build()
                .unwrap(),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(800)).unwrap())
        .service(transport!());
    // Inline, as a handler would write it: the spawned block itself must be `Send`.
    let mut c = client.clone();
    let inline = tokio::spawn(async move {
        c.ready()
            .await?
            .call(http::Request::new(String::new()))
            .await
    });
    assert_eq!(inline.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        client
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_readme_server_stack_runs_in_a_spawned_task() {
    let meter = LittleMeter::builder("spawn_server").build().unwrap();
    let queue = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(4)
        .build()
        .unwrap();
    let shed = ShedFraction::builder("spawn_server").build().unwrap();
    let quotas = ClientQuotas::builder(
        "spawn_server",
        Quota::per_second(NonZeroU32::new(100).unwrap()),
    )
    .build()
    .unwrap();
    let server = ServiceBuilder::new()
        .layer(LittleLayer::new(meter).with_classifier(HttpClassifier))
        .layer(
            ThrottleLayer::builder("throttle", HeaderKey::default())
                .shed(shed)
                .quotas(quotas)
                .build()
                .unwrap(),
        )
        .layer(queue)
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service(transport!());
    assert_eq!(spawned(server.clone()).await.unwrap().status(), 200);
    let mut s = server;
    let inline = tokio::spawn(async move {
        s.ready()
            .await?
            .call(http::Request::new(String::new()))
            .await
    });
    assert_eq!(inline.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn admission_over_backpressure_runs_in_a_spawned_task() {
    let queue = BackpressureLayer::new("backpressure", 4, 8).unwrap();
    let controller =
        AdmissionController::builder("admission", QueueDelay::of_limiter(queue.limiter()))
            .setpoint(0.05)
            .build()
            .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(AdmissionLayer::new(controller))
        .layer(queue)
        .layer(TokenBucketLayer::new(
            TokenBucket::builder("spawn_bp").build().unwrap(),
        ))
        .service(transport!());
    let inline = tokio::spawn(async move {
        svc.ready()
            .await?
            .call(http::Request::new(String::new()))
            .await
    });
    assert_eq!(inline.await.unwrap().unwrap().status(), 200);
}
