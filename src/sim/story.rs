//! The seeds' web-application story, ready to run against any stack.

use std::time::Duration;

use super::client::{CallPolicy, ClientBehavior, Reload, RetryPolicy};
use super::profile::LoadProfile;
use super::request::SimService;
use super::scenario::{Hop, Scenario};
use super::server::SimServer;
use super::service_time::ServiceTime;
use crate::error::ConfigError;

/// The web application of the congestion-collapse story, shared by the demo, the tests and
/// every primitive that proves itself in overload.
///
/// A service with 10 workers and a log-normal service time (mean 100 ms, cv 0.5) handles 100
/// requests per second. Demand is 50/s for 10 s, 110/s for 10 s, 200/s for 30 s (the surge),
/// then 50/s for 50 s. 200 clients; users give up after 1 s and reload at once, up to 3 times.
/// The naive client waits 300 ms per attempt and retries 3 times with exponential backoff
/// from 50 ms (jitter 0.5).
///
/// [`WebApp::scaled`] shortens every phase by a factor, for quick tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebApp {
    /// Multiplies the length of every phase of the load profile (1.0: the full 100 s story).
    pub time_scale: f64,
    /// The seed.
    pub seed: u64,
}

impl Default for WebApp {
    fn default() -> Self {
        WebApp {
            time_scale: 1.0,
            seed: 2026,
        }
    }
}

impl WebApp {
    /// Workers of the web service.
    pub const WORKERS: usize = 10;
    /// Mean service time.
    pub const SERVICE_MEAN: Duration = Duration::from_millis(100);
    /// How long users wait before they give up (and reload).
    pub const PATIENCE: Duration = Duration::from_secs(1);

    /// The story with its phases `time_scale` times as long (at least 1 s each).
    pub fn scaled(time_scale: f64) -> Self {
        WebApp {
            time_scale,
            ..WebApp::default()
        }
    }

    /// The same story with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn phase(&self, secs: u64) -> Duration {
        Duration::from_secs_f64((secs as f64 * self.time_scale).max(1.0).round())
    }

    /// 50/s, 110/s, the 200/s surge, then 50/s.
    pub fn profile(&self) -> LoadProfile {
        LoadProfile::new()
            .step(self.phase(10), 50.0)
            .step(self.phase(10), 110.0)
            .step(self.phase(30), 200.0)
            .step(self.phase(50), 50.0)
    }

    /// The web service's service time: log-normal, mean 100 ms, cv 0.5.
    pub fn service_time() -> ServiceTime {
        ServiceTime::LogNormal {
            mean: Self::SERVICE_MEAN,
            cv: 0.5,
        }
    }

    /// The naive client: 300 ms per attempt, 3 retries, exponential backoff from 50 ms.
    pub fn naive_call() -> CallPolicy {
        CallPolicy {
            attempt_timeout: Some(Duration::from_millis(300)),
            retry: RetryPolicy::Naive {
                retries: 3,
                backoff: Duration::from_millis(50),
                jitter: 0.5,
            },
        }
    }

    /// The users, with `call` as their client's harness-level behaviour.
    pub fn users(call: CallPolicy) -> ClientBehavior {
        ClientBehavior {
            clients: 200,
            patience: Self::PATIENCE,
            call,
            reload: Some(Reload {
                think_time: Duration::ZERO,
                max_reloads: 3,
            }),
            ..ClientBehavior::default()
        }
    }

    /// The naive run: no stacks, the unbounded FIFO queue, the naive client.
    pub fn naive(&self) -> Result<Scenario, ConfigError> {
        self.scenario("naive", Self::naive_call(), |next| next, SimServer::boxed)
    }

    /// The story with your client stack, your server stack and your client's harness-level
    /// `call` policy (use [`RetryPolicy::Stack`] when the client stack retries).
    pub fn scenario(
        &self,
        name: &str,
        call: CallPolicy,
        client_stack: impl Fn(SimService) -> SimService + Send + Sync + 'static,
        server_stack: impl Fn(SimServer) -> SimService + Send + Sync + 'static,
    ) -> Result<Scenario, ConfigError> {
        Scenario::builder(name)
            .seed(self.seed)
            .profile(self.profile())
            .clients(Self::users(call))
            .client_stack(client_stack)
            .hop(Hop::new("web", Self::WORKERS, Self::service_time()).stack(server_stack))
            .build()
    }
}
