//! backstop's client and server stacks for the web-application story, shared by the demo
//! (`examples/demo.rs`) and the test that holds it to its figures (`tests/demo_story.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backstop::BoxError;
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::retry::{RetryBudget, RetryLayer};
use backstop::sim::{CallPolicy, RetryPolicy, Scenario, SimServer, SimService, WebApp};
use backstop::timeout::TimeoutLayer;
use tower::ServiceBuilder;

/// Which of backstop's layers a run uses.
#[derive(Clone)]
pub struct WebStacks {
    /// The whole stacks, or the deadline-propagating timeouts alone.
    pub full: bool,
    /// One retry budget for every simulated user: the client-wide aggregate retry rate.
    pub budget: RetryBudget,
    /// Seeds each client's retry jitter, so the same run gives the same numbers.
    next_seed: Arc<AtomicU64>,
}

impl WebStacks {
    pub fn new(full: bool) -> Result<Self, BoxError> {
        Ok(WebStacks {
            full,
            budget: RetryBudget::builder("web_client").build()?,
            next_seed: Arc::default(),
        })
    }

    /// Server: metrics → [adaptive LIFO queue] → timeout inheriting the caller's deadline →
    /// workers.
    ///
    /// The LIFO queue admits as many requests as there are workers and serves the newest
    /// waiters first once it is behind, dropping those that waited too long; the timeout holds
    /// the whole call, so a request whose caller has left never keeps a worker busy.
    pub fn server(&self, server: SimServer, meter: LittleMeter) -> SimService {
        let deadline = TimeoutLayer::builder()
            .timeout(Duration::from_secs(10))
            .fraction(0.9)
            .build()
            .expect("valid timeout");
        let lifo = self.full.then(|| {
            LifoQueueLayer::builder("web")
                .max_in_flight(WebApp::WORKERS)
                .build()
                .expect("valid queue")
        });
        SimService::new(
            ServiceBuilder::new()
                .layer(LittleLayer::new(meter))
                .option_layer(lifo)
                .layer(deadline)
                .service(server),
        )
    }

    /// Client: an overall timeout equal to the user's patience; with the whole stack, at most
    /// one retry paid for by the shared budget, and a per-attempt timeout of half the time left.
    pub fn client(&self, next: SimService) -> SimService {
        let overall = TimeoutLayer::new(WebApp::PATIENCE).expect("valid timeout");
        let retry = self.full.then(|| {
            RetryLayer::builder(self.budget.clone())
                // The story's page loads are reads.
                .retry_non_idempotent()
                .backoff(Duration::from_millis(10), Duration::from_millis(100))
                .seed(self.next_seed.fetch_add(1, Ordering::Relaxed))
                .build()
                .expect("valid retry")
        });
        let attempt = self.full.then(|| {
            TimeoutLayer::builder()
                .timeout(WebApp::PATIENCE / 2)
                .fraction(0.5)
                .build()
                .expect("valid timeout")
        });
        SimService::new(
            ServiceBuilder::new()
                .layer(overall)
                .option_layer(retry)
                .option_layer(attempt)
                .service(next),
        )
    }

    /// The story with these stacks; `on_meter` receives the server's meter when it is built.
    pub fn scenario(
        &self,
        story: &WebApp,
        name: &str,
        on_meter: impl Fn(&LittleMeter) + Send + Sync + 'static,
    ) -> Result<Scenario, BoxError> {
        let call = CallPolicy {
            attempt_timeout: None,
            retry: RetryPolicy::Stack,
        };
        let (client, server) = (self.clone(), self.clone());
        Ok(story.scenario(
            name,
            call,
            move |next| client.client(next),
            move |s| {
                let meter = LittleMeter::builder("web")
                    .capacity(WebApp::WORKERS as f64)
                    .build()
                    .expect("valid meter");
                on_meter(&meter);
                server.server(s, meter)
            },
        )?)
    }
}
