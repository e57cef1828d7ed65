//! A scenario: who calls what, how hard, and for how long; and the run itself.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::client::{CallPolicy, Caller, ClientBehavior};
use super::profile::{Arrivals, LoadProfile};
use super::recorder::Recorder;
use super::report::{RecoveryRule, SimReport};
use super::request::{Abandoned, SimService};
use super::server::{Downstream, HopCounters, Network, SimServer};
use super::service_time::ServiceTime;
use crate::error::{ConfigError, check};
use crate::timeout::Deadline;

/// Wraps a server in its server stack.
pub type ServerStackFn = Arc<dyn Fn(SimServer) -> SimService + Send + Sync>;
/// Wraps the way to the next hop in a client stack.
pub type ClientStackFn = Arc<dyn Fn(SimService) -> SimService + Send + Sync>;

/// One service in the topology: a [`SimServer`] wrapped in its server stack, and how the hop
/// above (or, for the front hop, the users' client) reaches it.
#[derive(Clone)]
pub struct Hop {
    pub(crate) name: String,
    pub(crate) capacity: usize,
    pub(crate) service_time: ServiceTime,
    pub(crate) stack: ServerStackFn,
    pub(crate) caller_policy: CallPolicy,
    pub(crate) caller_stack: ClientStackFn,
    pub(crate) calls: u32,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hop")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("service_time", &self.service_time)
            .field("caller_policy", &self.caller_policy)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl Hop {
    /// A hop named `name` with `capacity` workers and the given service time, no server stack,
    /// called once per request of the hop above with no retries and no client stack.
    pub fn new(name: impl Into<String>, capacity: usize, service_time: ServiceTime) -> Self {
        Hop {
            name: name.into(),
            capacity,
            service_time,
            stack: Arc::new(SimServer::boxed),
            caller_policy: CallPolicy::default(),
            caller_stack: Arc::new(|next| next),
            calls: 1,
        }
    }

    /// The server stack around this hop's [`SimServer`] (built once: its clones share state).
    pub fn stack(
        mut self,
        stack: impl Fn(SimServer) -> SimService + Send + Sync + 'static,
    ) -> Self {
        self.stack = Arc::new(stack);
        self
    }

    /// How the hop above calls this one (ignored for the front hop, whose caller is the
    /// scenario's [`ClientBehavior`]): attempt timeout and the harness's retry loop.
    pub fn caller_policy(mut self, policy: CallPolicy) -> Self {
        self.caller_policy = policy;
        self
    }

    /// The client stack the hop above uses to call this one (ignored for the front hop, see
    /// [`ScenarioBuilder::client_stack`]). Built once per hop above.
    pub fn caller_stack(
        mut self,
        stack: impl Fn(SimService) -> SimService + Send + Sync + 'static,
    ) -> Self {
        self.caller_stack = Arc::new(stack);
        self
    }

    /// Sequential calls each request at the hop above makes to this one (default 1).
    pub fn calls(mut self, calls: u32) -> Self {
        self.calls = calls;
        self
    }
}

/// A complete, validated simulation: build it with [`Scenario::builder`], then
/// [`run`](Scenario::run) it.
#[derive(Clone)]
pub struct Scenario {
    pub(crate) name: String,
    pub(crate) seed: u64,
    pub(crate) profile: LoadProfile,
    pub(crate) arrivals: Arrivals,
    pub(crate) run_for: Duration,
    pub(crate) behavior: ClientBehavior,
    pub(crate) client_stack: ClientStackFn,
    pub(crate) hops: Vec<Hop>,
    pub(crate) surge: Option<(Duration, Duration)>,
    pub(crate) recovery: RecoveryRule,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("seed", &self.seed)
            .field("profile", &self.profile)
            .field("arrivals", &self.arrivals)
            .field("run_for", &self.run_for)
            .field("behavior", &self.behavior)
            .field("hops", &self.hops)
            .field("surge", &self.surge)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Scenario`]; [`build`](Self::build) checks every value.
#[derive(Clone)]
pub struct ScenarioBuilder {
    inner: Scenario,
}

impl Scenario {
    /// Starts a scenario named `name` (the name labels its report). Defaults: seed 1, no load,
    /// Poisson arrivals, [`ClientBehavior::default`], no client stack, no hops yet, the surge
    /// taken from the profile's peak, [`RecoveryRule::default`].
    pub fn builder(name: impl Into<String>) -> ScenarioBuilder {
        ScenarioBuilder {
            inner: Scenario {
                name: name.into(),
                seed: 1,
                profile: LoadProfile::new(),
                arrivals: Arrivals::Poisson,
                run_for: Duration::ZERO,
                behavior: ClientBehavior::default(),
                client_stack: Arc::new(|next| next),
                hops: Vec::new(),
                surge: None,
                recovery: RecoveryRule::default(),
            },
        }
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Logical requests per second the topology can serve: for each hop, workers over mean
    /// service time, divided by the calls one logical request makes to it; the smallest of
    /// those. (A hop that holds its worker while calling the next one can serve less.)
    pub fn capacity_rps(&self) -> f64 {
        let mut fanout = self.behavior.chain.calls as f64;
        let mut best = f64::INFINITY;
        for (i, hop) in self.hops.iter().enumerate() {
            if i > 0 {
                fanout *= hop.calls as f64;
            }
            let rate = hop.capacity as f64 / hop.service_time.mean().as_secs_f64().max(1e-9);
            best = best.min(rate / fanout);
        }
        best
    }

    /// The latency of one logical request on an idle system: the mean service times of all
    /// the calls it makes, in sequence.
    pub fn unloaded_latency(&self) -> Duration {
        let mut fanout = self.behavior.chain.calls;
        let mut total = Duration::ZERO;
        for (i, hop) in self.hops.iter().enumerate() {
            if i > 0 {
                fanout = fanout.saturating_mul(hop.calls);
            }
            total += hop.service_time.mean() * fanout;
        }
        total
    }

    /// Runs the scenario in a fresh single-threaded tokio runtime on a paused clock, and
    /// returns what it measured. Takes no wall-clock time beyond the computation. Must not be
    /// called from inside a tokio runtime (use [`run_async`](Self::run_async) there).
    pub fn run(self) -> SimReport {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread tokio runtime builds");
        rt.block_on(self.run_async())
    }

    /// Runs the scenario on the current runtime. The runtime must be a current-thread one with
    /// its clock paused (`#[tokio::test(start_paused = true)]`), or the run takes real time and
    /// is not deterministic. Tasks it spawned and that are still running at the end are left to
    /// the runtime (a fresh runtime per run, as [`run`](Self::run) does, is cleanest).
    pub async fn run_async(self) -> SimReport {
        let start = Instant::now();
        let bucket = Duration::from_secs(1);
        let mut master = StdRng::seed_from_u64(self.seed);
        let ids = Arc::new(AtomicU64::new(0));
        let counters: Vec<Arc<Mutex<HopCounters>>> = self
            .hops
            .iter()
            .map(|_| Arc::new(Mutex::new(HopCounters::new(start, bucket))))
            .collect();

        // Build from the back: each hop's server calls the network in front of the next one.
        let mut next: Option<SimService> = None;
        for (i, hop) in self.hops.iter().enumerate().rev() {
            let downstream = next.take().map(|network| {
                let callee = &self.hops[i + 1];
                Downstream {
                    service: Mutex::new((callee.caller_stack)(network)),
                    policy: callee.caller_policy,
                    calls: callee.calls,
                    ids: ids.clone(),
                }
            });
            let server = SimServer::new(
                i,
                hop.capacity,
                hop.service_time.clone(),
                master.random(),
                counters[i].clone(),
                downstream,
            );
            let stack = (hop.stack)(server);
            next = Some(SimService::new(Network {
                stack,
                stats: counters[i].clone(),
            }));
        }
        let front = next.expect("build() checks there is at least one hop");

        let recorder = Arc::new(Mutex::new(Recorder::new(start, bucket)));
        let ctx = Arc::new(RunCtx {
            behavior: self.behavior.clone(),
            client_stack: self.client_stack.clone(),
            front: Mutex::new(front),
            clients: Mutex::new(vec![None; self.behavior.clients as usize]),
            ids,
            recorder: recorder.clone(),
        });

        let arrivals = self.profile.arrival_times(self.arrivals, &mut master);
        for (logical, at) in arrivals.iter().enumerate() {
            tokio::time::sleep_until(start + *at).await;
            let client = master.random_range(0..self.behavior.clients);
            let seed: u64 = master.random();
            tokio::spawn(user(ctx.clone(), logical as u64, client, seed));
        }
        tokio::time::sleep_until(start + self.run_for).await;

        let end = Instant::now();
        let hops: Vec<(String, usize, HopCounters)> = self
            .hops
            .iter()
            .zip(&counters)
            .map(|(hop, c)| {
                let mut c = c.lock().unwrap_or_else(|e| e.into_inner()).clone();
                c.advance(end);
                (hop.name.clone(), hop.capacity, c)
            })
            .collect();
        let rec = recorder.lock().unwrap_or_else(|e| e.into_inner()).clone();
        SimReport::build(&self, rec, hops, end - start)
    }
}

impl ScenarioBuilder {
    /// The seed of every random draw in the run: same seed, same report.
    pub fn seed(mut self, seed: u64) -> Self {
        self.inner.seed = seed;
        self
    }

    /// The demand over time, in new logical requests per second.
    pub fn profile(mut self, profile: LoadProfile) -> Self {
        self.inner.profile = profile;
        self
    }

    /// Constant or Poisson arrivals (default Poisson).
    pub fn arrivals(mut self, arrivals: Arrivals) -> Self {
        self.inner.arrivals = arrivals;
        self
    }

    /// The simulated length of the run; default (or if shorter) the profile's length. Time
    /// after the profile ends lets the backlog drain with no new arrivals.
    pub fn run_for(mut self, run_for: Duration) -> Self {
        self.inner.run_for = run_for;
        self
    }

    /// How the users behave.
    pub fn clients(mut self, behavior: ClientBehavior) -> Self {
        self.inner.behavior = behavior;
        self
    }

    /// The client stack each client id wraps around the network to the front hop. Called once
    /// per client id (on its first request), so state the stack creates is per client; capture
    /// a shared handle in the closure for state shared by all clients.
    pub fn client_stack(
        mut self,
        stack: impl Fn(SimService) -> SimService + Send + Sync + 'static,
    ) -> Self {
        self.inner.client_stack = Arc::new(stack);
        self
    }

    /// Adds the next hop: the first call adds the front service, each later call adds the
    /// service the previous hop calls.
    pub fn hop(mut self, hop: Hop) -> Self {
        self.inner.hops.push(hop);
        self
    }

    /// The window whose goodput the summary reports and whose end starts the recovery clock.
    /// Default: the profile's peak ([`LoadProfile::peak`]).
    pub fn surge(mut self, start: Duration, end: Duration) -> Self {
        self.inner.surge = Some((start, end));
        self
    }

    /// When the system counts as recovered after the surge.
    pub fn recovery(mut self, rule: RecoveryRule) -> Self {
        self.inner.recovery = rule;
        self
    }

    /// Checks the values and builds the scenario.
    pub fn build(self) -> Result<Scenario, ConfigError> {
        let mut s = self.inner;
        s.profile.validate()?;
        s.behavior.validate()?;
        check("hops", s.hops.len(), |n| *n > 0, "at least one hop")?;
        for hop in &s.hops {
            check(
                "hop.capacity",
                hop.capacity,
                |c| *c > 0,
                "at least 1 worker",
            )?;
            check(
                "hop.capacity",
                hop.capacity,
                |c| *c <= tokio::sync::Semaphore::MAX_PERMITS,
                "at most tokio's Semaphore::MAX_PERMITS",
            )?;
            check("hop.calls", hop.calls, |c| *c > 0, "at least 1")?;
            hop.service_time.validate("hop.service_time")?;
            hop.caller_policy.validate("hop.caller_policy")?;
        }
        s.recovery.validate()?;
        s.run_for = s.run_for.max(s.profile.duration());
        if let Some((a, b)) = s.surge {
            check(
                "surge",
                (a, b),
                |(a, b)| a < b && *b <= s.run_for,
                "start < end <= run length",
            )?;
        } else {
            s.surge = s.profile.peak();
        }
        Ok(s)
    }
}

/// What every user task shares.
struct RunCtx {
    behavior: ClientBehavior,
    client_stack: ClientStackFn,
    front: Mutex<SimService>,
    clients: Mutex<Vec<Option<SimService>>>,
    ids: Arc<AtomicU64>,
    recorder: Arc<Mutex<Recorder>>,
}

impl RunCtx {
    fn client(&self, id: u32) -> SimService {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients[id as usize]
            .get_or_insert_with(|| {
                let front = self.front.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (self.client_stack)(front)
            })
            .clone()
    }

    fn record(&self, f: impl FnOnce(&mut Recorder)) {
        f(&mut self.recorder.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One logical request: a user's first load, and the reloads after giving up.
async fn user(ctx: Arc<RunCtx>, logical: u64, client: u32, seed: u64) {
    ctx.record(|r| r.offered(Instant::now()));
    let mut svc = ctx.client(client);
    let b = &ctx.behavior;
    let max_reloads = b.reload.map_or(0, |r| r.max_reloads);
    let mut caller = Caller {
        logical,
        client,
        reload: 0,
        step: 0,
        hop: 0,
        gives_up_at: Instant::now(),
        deadline: None,
        parent: Abandoned::default(),
        ids: ctx.ids.clone(),
        attempts: 0,
        rng: StdRng::seed_from_u64(seed),
    };
    for reload in 0..=max_reloads {
        let load_start = Instant::now();
        caller.reload = reload;
        caller.gives_up_at = load_start + b.patience;
        caller.deadline = Some(Deadline::at(caller.gives_up_at));
        ctx.record(|r| r.load(load_start));
        let outcome =
            tokio::time::timeout_at(caller.gives_up_at, chain(&mut caller, &mut svc, b)).await;
        let now = Instant::now();
        match outcome {
            Ok(Ok(())) => {
                ctx.record(|r| r.success(now, now - load_start));
                return;
            }
            Ok(Err(_)) => ctx.record(|r| r.error(now)),
            Err(_) => ctx.record(|r| r.gave_up(now)),
        }
        if reload == max_reloads {
            ctx.record(|r| r.left(now));
            return;
        }
        if let Some(reload) = b.reload {
            tokio::time::sleep(reload.think_time).await;
        }
    }
}

/// The chain of calls of one load, with the retry loop around the whole chain.
async fn chain(
    caller: &mut Caller,
    svc: &mut SimService,
    b: &ClientBehavior,
) -> Result<(), crate::BoxError> {
    let mut last = Ok(());
    for _ in 0..=b.chain.chain_retries {
        last = Ok(());
        for step in 0..b.chain.calls {
            caller.step = step;
            if let Err(e) = caller.call(svc, &b.call).await {
                last = Err(e);
                break;
            }
        }
        if last.is_ok() {
            return last;
        }
    }
    last
}
