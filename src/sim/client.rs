//! How simulated callers behave: timeouts, retry loops, user reloads, chains of calls.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tower::ServiceExt;

use super::request::{AbandonOnDrop, Abandoned, RequestParts, SimRequest, SimResponse, SimService};
use crate::error::{BoxError, ConfigError, check};
use crate::timeout::{Deadline, HasDeadline};

/// What the harness itself does when a call fails or takes too long.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RetryPolicy {
    /// One attempt per call.
    #[default]
    None,
    /// The naive client: up to `retries` more attempts after any error or attempt timeout,
    /// waiting `backoff × 2^n` before retry `n` (from 0), shortened by a random share of at
    /// most `jitter` (in [0, 1]: 0 is no jitter, 1 is "full jitter").
    Naive {
        /// Retries after the first attempt.
        retries: u32,
        /// The first backoff; it doubles with each retry.
        backoff: Duration,
        /// The largest random share taken off each backoff, in [0, 1].
        jitter: f64,
    },
    /// The client stack retries (a backstop retry layer, say): the harness makes one attempt.
    /// The same as `None` for the harness; it says in the scenario's description who retries.
    Stack,
}

impl RetryPolicy {
    fn retries(&self) -> u32 {
        match self {
            RetryPolicy::Naive { retries, .. } => *retries,
            RetryPolicy::None | RetryPolicy::Stack => 0,
        }
    }

    fn backoff(&self, n: u32, rng: &mut StdRng) -> Duration {
        match self {
            RetryPolicy::Naive {
                backoff, jitter, ..
            } => {
                let full = backoff.saturating_mul(1u32 << n.min(20));
                let cut: f64 = rng.random::<f64>() * jitter;
                full.mul_f64(1.0 - cut)
            }
            RetryPolicy::None | RetryPolicy::Stack => Duration::ZERO,
        }
    }

    fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if let RetryPolicy::Naive { jitter, .. } = self {
            check(
                field,
                *jitter,
                |j| (0.0..=1.0).contains(j),
                "a jitter in [0, 1]",
            )?;
        }
        Ok(())
    }
}

/// How one caller makes one call: an optional per-attempt timeout and a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CallPolicy {
    /// The harness stops waiting for an attempt after this long (and may retry). The request's
    /// deadline stays the user's; put a `TimeoutLayer` in the client stack to propagate a
    /// shorter one. `None`: wait until the user gives up.
    pub attempt_timeout: Option<Duration>,
    /// What to do after a failed or timed-out attempt.
    pub retry: RetryPolicy,
}

impl CallPolicy {
    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if let Some(t) = self.attempt_timeout {
            check(
                field,
                t,
                |t| !t.is_zero(),
                "an attempt_timeout greater than zero",
            )?;
        }
        self.retry.validate(field)
    }
}

/// A user who gave up (or saw an error) sends the same logical request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    /// The pause before the new try.
    pub think_time: Duration,
    /// Tries after the first; then the user leaves for good.
    pub max_reloads: u32,
}

/// A logical request as a chain of `calls` dependent calls to the front hop, made one after
/// the other; `chain_retries` restarts the whole chain from the first call after a failure
/// (a retry loop around the chain, on top of the per-call policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// Calls per logical request, at least 1.
    pub calls: u32,
    /// Restarts of the whole chain after a failed call.
    pub chain_retries: u32,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            calls: 1,
            chain_retries: 0,
        }
    }
}

/// How the users behave.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientBehavior {
    /// Distinct client ids; each logical request picks one at random. Each client gets its own
    /// client stack, built on first use.
    pub clients: u32,
    /// How long a user waits for the whole logical request (one load) before giving up. It is
    /// set as the request's [`Deadline`], and work finishing after it is wasted.
    pub patience: Duration,
    /// The per-call attempt timeout and retry policy of the client.
    pub call: CallPolicy,
    /// What a user does after giving up or seeing an error. `None`: leave.
    pub reload: Option<Reload>,
    /// The chain of calls one logical request makes.
    pub chain: Chain,
}

impl Default for ClientBehavior {
    fn default() -> Self {
        ClientBehavior {
            clients: 100,
            patience: Duration::from_secs(1),
            call: CallPolicy::default(),
            reload: None,
            chain: Chain::default(),
        }
    }
}

impl ClientBehavior {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check("clients", self.clients, |c| *c > 0, "at least 1")?;
        check(
            "patience",
            self.patience,
            |p| !p.is_zero(),
            "greater than zero",
        )?;
        check("chain.calls", self.chain.calls, |c| *c > 0, "at least 1")?;
        self.call.validate("client.call")
    }
}

/// Makes the attempts of one caller (a user's client, or a hop calling the next), numbering
/// them and raising the "caller left" flag of any attempt it stops waiting for.
pub(crate) struct Caller {
    pub(crate) logical: u64,
    pub(crate) client: u32,
    pub(crate) reload: u32,
    pub(crate) step: u32,
    pub(crate) hop: usize,
    pub(crate) gives_up_at: Instant,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) parent: Abandoned,
    pub(crate) ids: Arc<AtomicU64>,
    pub(crate) attempts: u32,
    pub(crate) rng: StdRng,
}

impl Caller {
    /// The caller a hop uses for the calls one incoming request makes to the next hop: same
    /// logical request, the incoming request's (possibly shortened) deadline.
    pub(crate) fn for_hop(
        req: &SimRequest,
        hop: usize,
        ids: Arc<AtomicU64>,
        rng: &Mutex<StdRng>,
    ) -> Caller {
        let seed = rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random::<u64>();
        Caller {
            logical: req.logical,
            client: req.client,
            reload: req.reload,
            step: req.step,
            hop,
            gives_up_at: req.caller_gives_up_at,
            deadline: req.deadline(),
            parent: req.abandoned.clone(),
            ids,
            attempts: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// One call with the policy's retry loop.
    pub(crate) async fn call(
        &mut self,
        svc: &mut SimService,
        policy: &CallPolicy,
    ) -> Result<SimResponse, BoxError> {
        let retries = policy.retry.retries();
        let mut n = 0;
        loop {
            match self.attempt(svc, policy.attempt_timeout).await {
                Ok(res) => return Ok(res),
                Err(e) => {
                    if n >= retries || Instant::now() >= self.gives_up_at {
                        return Err(e);
                    }
                    let delay = policy.retry.backoff(n, &mut self.rng);
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
            }
        }
    }

    async fn attempt(
        &mut self,
        svc: &mut SimService,
        timeout: Option<Duration>,
    ) -> Result<SimResponse, BoxError> {
        let (abandoned, flag) = self.parent.child();
        let guard = AbandonOnDrop::new(flag);
        let req: SimRequest = RequestParts {
            id: self.ids.fetch_add(1, Relaxed),
            logical: self.logical,
            client: self.client,
            attempt: self.attempts,
            reload: self.reload,
            step: self.step,
            hop: self.hop,
            caller_gives_up_at: self.gives_up_at,
            deadline: self.deadline,
            abandoned,
        }
        .into();
        self.attempts += 1;
        let fut = svc.clone().oneshot(req);
        let res = match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(res) => res,
                Err(elapsed) => Err(elapsed.into()),
            },
            None => fut.await,
        };
        if res.is_ok() {
            guard.disarm();
        }
        res
    }
}
