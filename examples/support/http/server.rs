//! The example server: a pool of workers behind backstop's server stack, on axum and hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use backstop::BoxError;
use backstop::classify::HttpClassifier;
use backstop::http::ErrorToResponseLayer;
use backstop::lifo_queue::{AdaptiveQueue, LifoQueueLayer};
use backstop::metrics::{LittleLayer, LittleMeter, names};
use backstop::pid::{AdmissionController, AdmissionLayer, QueueDelay};
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ShedFraction, ThrottleLayer};
use backstop::timeout::TimeoutLayer;
use backstop::timeout::headers::inherit_deadline;
use http::{Request, Response, StatusCode};
use hyper::body::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use rand::RngExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Every stage of the server stack has this type, so layers can be added one by one.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Applies `layer` to `svc` and brings the result back to [`HttpService`] (boxing the body,
/// so a layer that wraps it, such as the LIFO queue holding its slot until the body ends, fits).
pub fn wrap<L, RB>(svc: HttpService, layer: L) -> HttpService
where
    L: Layer<HttpService>,
    L::Service: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    RB: hyper::body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        layer
            .layer(svc)
            .map_response(|res| res.map(Body::new))
            .map_err(Into::into),
    )
}

/// The handler's figures: how much work it started, finished, and abandoned half-way.
#[derive(Debug, Default)]
pub struct WorkStats {
    /// Requests that got a worker and began their work.
    pub started: AtomicU64,
    /// Requests whose work ran to the end.
    pub completed: AtomicU64,
    /// Requests dropped while waiting for a worker or working (the caller's deadline ran out).
    pub abandoned: AtomicU64,
    /// Requests that reached the handler at all.
    pub arrived: AtomicU64,
    /// Worker time spent, in microseconds (work finished or cut off).
    pub busy_us: AtomicU64,
    /// Requests marked as a retry by the client (`backstop-attempt: 2` or more).
    pub retries: AtomicU64,
    /// Requests marked as a hedge's duplicate (`backstop-hedge: 1`).
    pub hedges: AtomicU64,
    /// Answers the whole stack gave with 429 (the throttle: a quota, or the client shed).
    pub refused_429: AtomicU64,
    /// Answers the whole stack gave with 503 (the queue full or shedding, admission denied).
    pub refused_503: AtomicU64,
}

/// The work: `workers` at once, each request holding one for a service time drawn around
/// `mean`. Requests past the workers wait in the semaphore's unbounded FIFO line: with no
/// backstop layer in front, that is the baseline that collapses.
#[derive(Clone)]
pub struct Workers {
    pool: Arc<Semaphore>,
    pub workers: usize,
    pub mean: Duration,
    /// Exponential service times when true, else every request takes `mean`.
    pub exponential: bool,
    /// The share of requests answered 500 (to give retries something to do).
    pub failure_rate: f64,
    /// A slow tail: this share of requests takes this long instead (a GC pause, a cold cache).
    pub slow: Option<(f64, Duration)>,
    pub stats: Arc<WorkStats>,
}

impl Workers {
    pub fn new(workers: usize, mean: Duration) -> Self {
        Workers {
            pool: Arc::new(Semaphore::new(workers)),
            workers,
            mean,
            exponential: false,
            failure_rate: 0.0,
            slow: None,
            stats: Arc::default(),
        }
    }

    /// Requests per second the workers can serve: workers / mean service time.
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.mean.as_secs_f64()
    }

    fn draw(&self) -> (Duration, bool) {
        let mut rng = rand::rng();
        let time = if self.exponential {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            self.mean.mul_f64(-u.ln()).min(self.mean * 20)
        } else {
            self.mean
        };
        let time = match self.slow {
            Some((share, slow)) if rng.random_bool(share) => slow,
            _ => time,
        };
        (time, rng.random_bool(self.failure_rate))
    }

    /// The handler as the innermost [`HttpService`].
    pub fn service(&self) -> HttpService {
        let me = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            let attempt = req
                .headers()
                .get(backstop::retry::ATTEMPT_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
            let hedge = req
                .headers()
                .get(super::client::HEDGE_HEADER)
                .is_some_and(|v| v != "0");
            async move {
                if hedge {
                    me.stats.hedges.fetch_add(1, Relaxed);
                }
                me.stats.arrived.fetch_add(1, Relaxed);
                if attempt.is_some_and(|a| a >= 2) {
                    me.stats.retries.fetch_add(1, Relaxed);
                }
                let mut guard = Guard {
                    stats: &me.stats,
                    working_since: None,
                    done: false,
                };
                let _worker = me.pool.acquire().await?;
                me.stats.started.fetch_add(1, Relaxed);
                guard.working_since = Some(tokio::time::Instant::now());
                let (time, fail) = me.draw();
                tokio::time::sleep(time).await;
                guard.done = true;
                me.stats.completed.fetch_add(1, Relaxed);
                let status = if fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let mut res = Response::new(Body::from("done\n"));
                *res.status_mut() = status;
                Ok::<_, BoxError>(res)
            }
        }))
    }
}

/// Counts a handler future dropped before it finished, and the worker time spent.
struct Guard<'a> {
    stats: &'a WorkStats,
    working_since: Option<tokio::time::Instant>,
    done: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.abandoned.fetch_add(1, Relaxed);
        }
        if let Some(since) = self.working_since {
            self.stats
                .busy_us
                .fetch_add(since.elapsed().as_micros() as u64, Relaxed);
        }
    }
}

/// The layers of backstop's server stack, each optional, outermost first:
/// whole-client throttle → PID admission → adaptive LIFO queue → deadline timeout → handler.
pub struct ServerStack {
    /// Whole-client throttling, keyed by the `x-client-id` header.
    pub throttle: Option<ThrottleLayer<HeaderKey>>,
    /// The PID admission controller, watching the queue's expected wait.
    pub pid: Option<AdmissionController>,
    /// What the PID's output does (see [`PidMode`]).
    pub pid_mode: PidMode,
    /// Any other admission layer to put where the queue goes (e.g. backpressure).
    pub admission: Option<Box<dyn FnOnce(HttpService) -> HttpService + Send>>,
    /// The adaptive LIFO queue (usually as many slots as workers).
    pub lifo: Option<LifoQueueLayer<backstop::backpressure::UntilBodyEnd>>,
    /// The deadline timeout just above the handler: the server's own limit, shrunk to the
    /// caller's `grpc-timeout`.
    pub deadline: Option<TimeoutLayer>,
    /// A Little's-law meter around the handler alone, whose capacity is the worker count: its
    /// utilization is the share of worker time in use.
    pub worker_meter: Option<LittleMeter>,
}

/// Requests per second each client (`x-client-id`) may send before its quota refuses it.
pub const CLIENT_QUOTA_PER_SECOND: u32 = 100;
/// The PID controller's setpoint: the LIFO queue's expected wait, in seconds.
pub const QUEUE_DELAY_SETPOINT: f64 = 0.020;

/// Where the PID controller's output acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// It sets the share of whole clients the throttle sheds (429 at the door); the controller
    /// is ticked by a task of its own. The PID doc's advice: shed at the source.
    Throttle,
    /// Its admission layer refuses that share of requests (503), client by client at random.
    Admission,
    /// Both at once: each sees the other's cut as a smaller load, so the loop gain doubles.
    Both,
}

impl ServerStack {
    /// No backstop layer at all: the workers' unbounded FIFO line. The baseline.
    pub fn none() -> Self {
        ServerStack {
            throttle: None,
            pid: None,
            pid_mode: PidMode::Throttle,
            admission: None,
            lifo: None,
            deadline: None,
            worker_meter: None,
        }
    }

    /// The recommended stack: a whole-client throttle (a quota per client, and the share of
    /// clients the PID controller asks to shed) → PID admission on the queue's expected wait →
    /// adaptive LIFO queue with a slot per worker → a 2 s timeout shrunk to the caller's deadline.
    pub fn recommended(workers: usize) -> Result<Self, BoxError> {
        Self::with_pid(workers, PidMode::Throttle)
    }

    /// The recommended stack with the PID's output acting as `mode` says.
    pub fn with_pid(workers: usize, mode: PidMode) -> Result<Self, BoxError> {
        Self::pid_stack(workers, mode, None, None)
    }

    /// [`with_pid`](Self::with_pid) set up as the PID's documentation recommends, for workers
    /// that serve `capacity` requests/s: a short line of 2 × setpoint × capacity waiting (8 at
    /// 200/s) and a dead band of setpoint / 2. The short line bounds the controller's signal (the
    /// queue's expected wait) near the setpoint: with the default 1024 waiting, a 3× surge moves
    /// it by 25× the setpoint within one 100 ms tick. The controller's error bound (3 × the
    /// setpoint by default) keeps P and D from slamming the shed fraction on that (open loop:
    /// 0.88–0.95 of capacity, where unbounded about one run in five fell to 0.60–0.66), but
    /// under a closed-loop generator the long line still serves less (wrk: 0.63–0.64).
    pub fn with_pid_short_line(
        workers: usize,
        mode: PidMode,
        capacity: f64,
    ) -> Result<Self, BoxError> {
        let line = (2.0 * QUEUE_DELAY_SETPOINT * capacity).ceil().max(1.0) as usize;
        Self::pid_stack(workers, mode, Some(line), None)
    }

    /// [`with_pid_short_line`](Self::with_pid_short_line) (or, with `capacity` `None`,
    /// [`with_pid`](Self::with_pid)) with the controller's
    /// [`idle_release`](backstop::pid::AdmissionControllerBuilder::idle_release) set to
    /// `share` (0: off, the shed unwinding at the integral's own pace after a surge).
    pub fn with_pid_idle_release(
        workers: usize,
        mode: PidMode,
        capacity: Option<f64>,
        share: f64,
    ) -> Result<Self, BoxError> {
        let line = capacity.map(|c| (2.0 * QUEUE_DELAY_SETPOINT * c).ceil().max(1.0) as usize);
        Self::pid_stack(workers, mode, line, Some(share))
    }

    fn pid_stack(
        workers: usize,
        mode: PidMode,
        line: Option<usize>,
        idle_release: Option<f64>,
    ) -> Result<Self, BoxError> {
        let mut lifo = LifoQueueLayer::builder("http_server")
            .max_in_flight(workers)
            .hold_until_body_end();
        if let Some(line) = line {
            lifo = lifo.max_waiting(line);
        }
        let lifo = lifo.build()?;
        let shed = ShedFraction::builder("http_server").build()?;
        let quota = Quota::per_second(CLIENT_QUOTA_PER_SECOND.try_into()?);
        let throttle = ThrottleLayer::builder("http_server", HeaderKey::default())
            .shed(shed.clone())
            .quotas(ClientQuotas::builder("http_server", quota).build()?)
            .build()?;
        let mut pid =
            AdmissionController::builder("http_server", QueueDelay::of_queue(lifo.queue()))
                .setpoint(QUEUE_DELAY_SETPOINT)
                .draw(backstop::pid::Draw::Even);
        if line.is_some() {
            pid = pid.dead_band(QUEUE_DELAY_SETPOINT / 2.0);
        }
        // `BACKSTOP_IDLE_RELEASE` sets it for any example server (0: off), unless the caller did.
        let from_env = || std::env::var("BACKSTOP_IDLE_RELEASE").ok()?.parse().ok();
        if let Some(share) = idle_release.or_else(from_env) {
            pid = pid.idle_release(share);
        }
        if mode != PidMode::Admission {
            pid = pid.on_shed_fraction(move |p| shed.set(p));
        }
        Ok(ServerStack {
            throttle: Some(throttle),
            pid: Some(pid.build()?),
            pid_mode: mode,
            admission: None,
            lifo: Some(lifo),
            deadline: Some(TimeoutLayer::new(Duration::from_secs(2))?),
            worker_meter: None,
        })
    }
}

/// A running example server. Dropping it stops the server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub workers: Workers,
    /// The Little's-law meter at the top of the stack (`name="http_server"`).
    pub meter: LittleMeter,
    pub queue: Option<AdaptiveQueue>,
    pub pid: Option<AdmissionController>,
    pub shed: Option<ShedFraction>,
    task: JoinHandle<()>,
    ticker: Option<JoinHandle<()>>,
}

impl RunningServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

/// Starts the server on 127.0.0.1, on a port the OS picks: `/work` behind `stack`, and
/// `/metrics` in Prometheus's text format.
pub async fn start(
    workers: Workers,
    stack: ServerStack,
    prometheus: PrometheusHandle,
) -> Result<RunningServer, BoxError> {
    // Series are registered when a layer is built: a recorder installed after the stack was
    // built never sees them, and `/metrics` would silently lack them. Fail loudly instead.
    let scrape = prometheus.render();
    let built = [
        (stack.lifo.is_some(), names::QUEUE_LENGTH),
        (stack.throttle.is_some(), names::THROTTLE_SHED_FRACTION),
        (stack.pid.is_some(), names::ADMISSION_PROBABILITY),
    ];
    if let Some((_, missing)) = built
        .iter()
        .find(|(built, series)| *built && !scrape.contains(series))
    {
        return Err(format!(
            "{missing} is not in /metrics: install the recorder (support::prometheus()) before building the layers"
        )
        .into());
    }
    let meter = LittleMeter::builder("http_server")
        .capacity(workers.workers as f64)
        .window(Duration::from_secs(1))
        .build()?;
    // Innermost first: handler ← deadline ← queue ← pid ← throttle ← read grpc-timeout.
    let mut svc = workers.service();
    if let Some(meter) = stack.worker_meter {
        svc = wrap(svc, LittleLayer::new(meter).with_classifier(HttpClassifier));
    }
    if let Some(deadline) = stack.deadline {
        svc = wrap(svc, deadline);
    }
    let queue = stack.lifo.as_ref().map(|l| l.queue().clone());
    if let Some(lifo) = stack.lifo {
        svc = wrap(svc, lifo);
    }
    if let Some(admission) = stack.admission {
        svc = admission(svc);
    }
    let pid = stack.pid.clone();
    let mut ticker = None;
    if let Some(controller) = stack.pid {
        if stack.pid_mode == PidMode::Throttle {
            // No request passes an admission layer to tick it: it ticks on its own.
            ticker = Some(tokio::spawn(controller.run_ticker()));
        } else {
            svc = wrap(svc, AdmissionLayer::new(controller));
        }
    }
    let shed = stack.throttle.as_ref().and_then(|t| t.shed().cloned());
    if let Some(throttle) = stack.throttle {
        svc = wrap(svc, throttle);
    }
    svc = BoxCloneSyncService::new(svc.map_request(inherit_deadline::<Body>));
    // Every error becomes its answer (429/503 + Retry-After, 504, 500), so the route cannot
    // fail, as axum wants; the meter under it counts refusals as overloads. Refusals are
    // counted at the top, so that a summary sees every layer's (the throttle's 429s as well as
    // the queue's 503s).
    let stats = workers.stats.clone();
    let route = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(LittleLayer::new(meter.clone()))
        .service(svc)
        .map_response(move |res| {
            match res.status() {
                StatusCode::TOO_MANY_REQUESTS => stats.refused_429.fetch_add(1, Relaxed),
                StatusCode::SERVICE_UNAVAILABLE => stats.refused_503.fetch_add(1, Relaxed),
                _ => 0,
            };
            res
        });

    let app = Router::new().route_service("/work", route).route(
        "/metrics",
        get(move || {
            // Meters and buckets publish every 100 ms from their own sums: exact at a scrape.
            backstop::metrics::publish();
            std::future::ready(prometheus.render())
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(RunningServer {
        addr,
        workers,
        meter,
        queue,
        pid,
        shed,
        task,
        ticker,
    })
}
