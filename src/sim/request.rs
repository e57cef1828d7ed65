//! What travels through a simulated stack: [`SimRequest`] and [`SimResponse`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneService;

use crate::context::{Criticality, HasCriticality};
use crate::error::BoxError;
use crate::timeout::{Deadline, HasDeadline};

/// The service type every simulated hop and stack is erased to, so stacks of any shape plug in.
pub type SimService = BoxCloneService<SimRequest, SimResponse, BoxError>;

/// One attempt sent by a simulated caller: a user's client, or a hop calling the next one.
///
/// It carries the caller's [`Deadline`] (so backstop's `TimeoutLayer` and deadline propagation
/// see it) and, with the `http` feature, an [`http::Extensions`] map where layers can attach
/// their own markers. It is `Clone`, as retry and hedge layers need.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// Unique id of this attempt within the run.
    pub id: u64,
    /// The logical request (one user's page load and all its reloads, retries and chain steps).
    pub logical: u64,
    /// The client that sent the logical request, in `0..clients`.
    pub client: u32,
    /// Which attempt this is for the same call: 0 for the first try; retries and user reloads
    /// count up from there.
    pub attempt: u32,
    /// The user's reload count: 0 for the first load.
    pub reload: u32,
    /// The step in a chain of dependent calls, from 0.
    pub step: u32,
    /// The hop the request is addressed to: 0 is the front service.
    pub hop: usize,
    /// When the attempt was sent.
    pub sent_at: Instant,
    /// When the user stops waiting for the answer: work that finishes after it is wasted.
    pub caller_gives_up_at: Instant,
    deadline: Option<Deadline>,
    criticality: Option<Criticality>,
    /// Flags raised when a caller up the chain stopped waiting for this attempt.
    pub(crate) abandoned: Abandoned,
    /// Free-form markers for layers (feature `http`).
    #[cfg(feature = "http")]
    pub extensions: http::Extensions,
}

impl SimRequest {
    /// A request with the given ids, sent now, whose caller gives up at `caller_gives_up_at`,
    /// carrying that instant as its deadline. Mostly for tests of stacks outside a scenario.
    pub fn new(id: u64, client: u32, caller_gives_up_at: Instant) -> Self {
        SimRequest {
            id,
            logical: id,
            client,
            attempt: 0,
            reload: 0,
            step: 0,
            hop: 0,
            sent_at: Instant::now(),
            caller_gives_up_at,
            deadline: Some(Deadline::at(caller_gives_up_at)),
            criticality: None,
            abandoned: Abandoned::default(),
            #[cfg(feature = "http")]
            extensions: http::Extensions::new(),
        }
    }

    /// True when the answer to this attempt can no longer be used: the user's time is up, or a
    /// caller on the way (the client's retry loop, a hop above) stopped waiting for it.
    pub fn is_abandoned(&self) -> bool {
        Instant::now() >= self.caller_gives_up_at || self.abandoned.any()
    }
}

impl HasDeadline for SimRequest {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

impl HasCriticality for SimRequest {
    fn criticality(&self) -> Option<Criticality> {
        self.criticality
    }
    fn set_criticality(&mut self, criticality: Criticality) {
        self.criticality = Some(criticality);
    }
}

/// The answer of a simulated server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimResponse {
    /// The id of the attempt answered.
    pub id: u64,
    /// The hop that answered (the front hop, for a layered topology).
    pub hop: usize,
    /// Time the request waited for a worker at that hop.
    pub queued: Duration,
    /// Time the worker spent on it at that hop (its own work, not the calls below it).
    pub service: Duration,
}

// The simulator implements the library's request traits: no primitive knows the simulator.

/// Simulated requests: idempotent when their extensions hold
/// [`Idempotent`](crate::retry::Idempotent); the retry gets an [`Attempt`](crate::retry::Attempt)
/// extension. (The harness's own `attempt` field is left to the harness.) Without the `http`
/// feature they are never idempotent unless a predicate or `AnyRequest` says so.
impl crate::retry::RetryRequest for SimRequest {
    #[cfg(feature = "http")]
    fn is_idempotent(&self) -> bool {
        self.extensions.get::<crate::retry::Idempotent>().is_some()
    }
    #[cfg(feature = "http")]
    fn set_attempt(&mut self, attempt: u32) {
        self.extensions.insert(crate::retry::Attempt(attempt));
    }
}

/// Simulated requests: idempotent when their extensions hold
/// [`Idempotent`](crate::retry::Idempotent); copies are marked with their
/// [`HedgeCopy`](crate::hedge::HedgeCopy). Without the `http` feature they are never idempotent
/// unless a predicate says so.
impl crate::hedge::HedgeRequest for SimRequest {
    #[cfg(feature = "http")]
    fn is_idempotent(&self) -> bool {
        self.extensions.get::<crate::retry::Idempotent>().is_some()
    }
    #[cfg(feature = "http")]
    fn mark_copy(&mut self, copy: crate::hedge::HedgeCopy) {
        self.extensions.insert(copy);
    }
    fn deadline(&self) -> Option<Deadline> {
        HasDeadline::deadline(self)
    }
}

/// A simulated answer is always a success: the simulated servers fail with errors.
impl crate::classify::DefaultClassify for SimResponse {}

/// The chain of "caller stopped waiting" flags of an attempt: its own and its ancestors'.
#[derive(Debug, Clone, Default)]
pub(crate) struct Abandoned(Vec<Arc<AtomicBool>>);

impl Abandoned {
    /// The flags of a child attempt: the parent's plus a fresh one, returned for the caller.
    pub(crate) fn child(&self) -> (Abandoned, Arc<AtomicBool>) {
        let own = Arc::new(AtomicBool::new(false));
        let mut flags = self.0.clone();
        flags.push(own.clone());
        (Abandoned(flags), own)
    }

    fn any(&self) -> bool {
        self.0.iter().any(|f| f.load(Relaxed))
    }
}

/// Raises its flag when dropped before [`disarm`](Self::disarm): the caller stopped waiting.
pub(crate) struct AbandonOnDrop(Option<Arc<AtomicBool>>);

impl AbandonOnDrop {
    pub(crate) fn new(flag: Arc<AtomicBool>) -> Self {
        AbandonOnDrop(Some(flag))
    }
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Relaxed);
        }
    }
}

/// Builds requests for the harness.
pub(crate) struct RequestParts {
    pub(crate) id: u64,
    pub(crate) logical: u64,
    pub(crate) client: u32,
    pub(crate) attempt: u32,
    pub(crate) reload: u32,
    pub(crate) step: u32,
    pub(crate) hop: usize,
    pub(crate) caller_gives_up_at: Instant,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) abandoned: Abandoned,
}

impl From<RequestParts> for SimRequest {
    fn from(p: RequestParts) -> Self {
        SimRequest {
            id: p.id,
            logical: p.logical,
            client: p.client,
            attempt: p.attempt,
            reload: p.reload,
            step: p.step,
            hop: p.hop,
            sent_at: Instant::now(),
            caller_gives_up_at: p.caller_gives_up_at,
            deadline: p.deadline,
            criticality: None,
            abandoned: p.abandoned,
            #[cfg(feature = "http")]
            extensions: http::Extensions::new(),
        }
    }
}
