//! A tonic server and a tonic client on loopback, each with backstop's stack: the gRPC edge end
//! to end. No `protoc` and no build script: the one method, `demo.Work/Do`, takes and returns a
//! `u64` through a four-line tonic codec.
//!
//! The server is `tonic::transport::Server::builder().layer(server_stack)`, the stack as it is:
//!
//! `ErrorToGrpcLayer → inherit_deadline (grpc-timeout) → LifoQueueLayer (4 in flight, 8 waiting)
//! → TimeoutLayer → tonic routes`
//!
//! Its capacity is fixed: 4 workers, 20 ms of work a call, 200 calls/s. The client is a
//! `tonic::client::Grpc` over a `Channel` wrapped in:
//!
//! `ClientRefusalLayer → TimeoutLayer (250 ms a call) → ReplayBodyLayer → RetryLayer (RetryBudget) →
//! send_deadline (grpc-timeout) → ReadTrailersLayer → Channel`
//!
//! with no classifier call: the default classifier reads `grpc-status` and
//! `grpc-retry-pushback-ms`. Three phases, on one client stack:
//! 1. 3× capacity (600 calls/s for 1.5 s, open loop): the queue refuses what it cannot serve in
//!    time, as `UNAVAILABLE` with a pushback. `goodput` is the calls answered OK within their deadline ÷
//!    what the server can serve in the same time (capacity × duration).
//! 2. The server answers `UNAVAILABLE` with a 50 ms pushback to the first attempt of every
//!    call, and serves the retry. `retried_unavailable` is the share of those calls the client
//!    retried, as far as its budget (earned by the successes before) allowed; `pushback_respected=1` only if
//!    every retry reached the server at least 50 ms after its first attempt.
//! 3. The server answers `RESOURCE_EXHAUSTED` with a 200 ms pushback to every attempt.
//!    `retried_exhausted` counts the attempts after the first that reached the server: 0 is
//!    right (an overload is never retried).
//!
//! `overload_code` is the gRPC code the server's refusals carried in phase 1, counted by the
//! `ErrorToGrpcLayer` hook; `deadline_seen_ms` the deadline the server's handler read from the
//! client's `grpc-timeout` on its first call. It ends with one line:
//! `summary: goodput=F overload_code=N retried_unavailable=F retried_exhausted=N pushback_respected=0|1 deadline_seen_ms=N`.
//! Real sockets and the real clock (about 6 s); every loop is bounded in count and time, the
//! whole run is under a 60 s timeout. `tests/grpc_service.rs` runs it and checks each claim.
//!
//!     cargo run --release --features grpc --example grpc_service

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backstop::BoxError;
use backstop::grpc::{
    ClientRefusalLayer, Code, ErrorToGrpcLayer, GRPC_PUSHBACK_HEADER, ReadTrailersLayer,
};
use backstop::http::{ReplayBody, ReplayBodyLayer, ResponseBody};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::retry::{ATTEMPT_HEADER, RetryBudget, RetryLayer};
use backstop::timeout::headers::{inherit_deadline, send_deadline};
use backstop::timeout::{HasDeadline, TimeoutLayer};
use http::uri::PathAndQuery;
use tokio::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tower::{Service, ServiceBuilder};

/// Workers and work per call: the server's fixed capacity is `WORKERS / WORK` calls a second.
const WORKERS: usize = 4;
const WORK: Duration = Duration::from_millis(20);
const CAPACITY_PER_SEC: f64 = WORKERS as f64 / 0.020;
/// Phase 1: three times the capacity, for this long.
const OVERLOAD_FACTOR: f64 = 3.0;
const OVERLOAD_FOR: Duration = Duration::from_millis(1500);
/// The client's deadline for each call, the retry included.
const CALL_DEADLINE: Duration = Duration::from_millis(250);
/// Phases 2 and 3: this many calls each, this many at a time.
const PHASE_CALLS: u64 = 200;
const PHASE_CONCURRENCY: u64 = 4;
const UNAVAILABLE_PUSHBACK_MS: u64 = 50;
const EXHAUSTED_PUSHBACK_MS: u64 = 200;
const RUN_BOUND: Duration = Duration::from_secs(60);
const METHOD: &str = "/demo.Work/Do";
const CALL_ID: &str = "x-call-id";

// ---------------------------------------------------------------------------------------------
#[path = "support/u64_codec.rs"]
mod u64_codec;
use u64_codec::U64Codec;

// ---------------------------------------------------------------------------------------------
// The server.

/// What the handler does with a call.
const SERVE: u8 = 0;
const UNAVAILABLE_ONCE: u8 = 1;
const EXHAUSTED: u8 = 2;

#[derive(Default)]
struct ServerStats {
    mode: AtomicU8,
    /// The deadline the handler read on its first call, in ms (0: none yet).
    deadline_seen_ms: AtomicU64,
    /// Attempts after the first that reached the handler, per phase mode.
    retries: [AtomicU64; 3],
    /// First attempts per phase mode.
    firsts: [AtomicU64; 3],
    /// Phase 2: when each call's first attempt arrived, and the gap to its retry.
    first_seen: Mutex<HashMap<u64, Instant>>,
    retry_gaps_ms: Mutex<Vec<u64>>,
    /// The codes the `ErrorToGrpcLayer` hook answered refusals with.
    refusal_codes: Mutex<BTreeMap<u32, u64>>,
}

/// The hand-written `demo.Work` service: what tonic-build would generate, for one method.
#[derive(Clone)]
struct WorkService {
    stats: Arc<ServerStats>,
}

impl NamedService for WorkService {
    const NAME: &'static str = "demo.Work";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for WorkService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let stats = self.stats.clone();
        Box::pin(async move {
            if req.uri().path() != METHOD {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            // What `inherit_deadline` read from `grpc-timeout`, on the first call only.
            if let Some(deadline) = req.deadline() {
                let ms = deadline.remaining().as_millis().max(1) as u64;
                let _ = stats
                    .deadline_seen_ms
                    .compare_exchange(0, ms, Relaxed, Relaxed);
            }
            let handler = tower::service_fn(move |call: Request<u64>| {
                let stats = stats.clone();
                async move { handle(&stats, call).await }
            });
            Ok(tonic::server::Grpc::new(U64Codec).unary(handler, req).await)
        })
    }
}

async fn handle(stats: &ServerStats, call: Request<u64>) -> Result<Response<u64>, Status> {
    let mode = stats.mode.load(Relaxed);
    let attempt: u32 = call
        .metadata()
        .get(ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1);
    let id: u64 = call
        .metadata()
        .get(CALL_ID)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let counter = if attempt >= 2 {
        &stats.retries
    } else {
        &stats.firsts
    };
    counter[usize::from(mode)].fetch_add(1, Relaxed);
    match mode {
        UNAVAILABLE_ONCE if attempt < 2 => {
            stats.first_seen.lock().unwrap().insert(id, Instant::now());
            return Err(with_pushback(
                Status::unavailable("warming up"),
                UNAVAILABLE_PUSHBACK_MS,
            ));
        }
        UNAVAILABLE_ONCE => {
            if let Some(first) = stats.first_seen.lock().unwrap().get(&id) {
                let gap = first.elapsed().as_millis() as u64;
                stats.retry_gaps_ms.lock().unwrap().push(gap);
            }
        }
        EXHAUSTED => {
            return Err(with_pushback(
                Status::resource_exhausted("quota"),
                EXHAUSTED_PUSHBACK_MS,
            ));
        }
        _ => {}
    }
    tokio::time::sleep(WORK).await;
    Ok(Response::new(call.into_inner() + 1))
}

/// A status answered trailers-only, with `grpc-retry-pushback-ms`.
fn with_pushback(status: Status, ms: u64) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(GRPC_PUSHBACK_HEADER, MetadataValue::from(ms));
    Status::with_metadata(status.code(), status.message().to_owned(), metadata)
}

async fn start_server(
    stats: Arc<ServerStats>,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let queue = LifoQueueLayer::builder("grpc_server_queue")
        .max_in_flight(WORKERS)
        .max_waiting(2 * WORKERS)
        .build()?;
    let hook_stats = stats.clone();
    let server_stack = ServiceBuilder::new()
        // Every refusal below becomes a trailers-only gRPC answer.
        .layer(
            ErrorToGrpcLayer::new().on_error(move |_: &BoxError, code: Code| {
                *hook_stats
                    .refusal_codes
                    .lock()
                    .unwrap()
                    .entry(code.code())
                    .or_default() += 1;
            }),
        )
        .map_request(inherit_deadline::<tonic::body::Body>)
        .layer(queue)
        .layer(TimeoutLayer::new(Duration::from_secs(1))?)
        .into_inner();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .layer(server_stack)
            .add_service(WorkService { stats })
            .serve_with_incoming_shutdown(incoming, async {
                stopped.await.ok();
            }),
    );
    Ok((addr, stop))
}

// ---------------------------------------------------------------------------------------------
// The client.

/// Builds backstop's client stack over a tonic `Channel`, under tonic's own gRPC client.
fn client(
    channel: Channel,
    budget: RetryBudget,
) -> Result<tonic::client::Grpc<impl GrpcStack>, BoxError> {
    let stack = ServiceBuilder::new()
        // The client's own refusals and timeouts reach the caller as gRPC statuses
        // (`DEADLINE_EXCEEDED` here, not `UNKNOWN`).
        .layer(ClientRefusalLayer::new())
        // The whole call, the retry included.
        .layer(TimeoutLayer::new(CALL_DEADLINE)?)
        // tonic's request body streams: kept so a retry can send it again.
        .layer(ReplayBodyLayer::new("grpc_client"))
        // Every gRPC call is a POST; this method is idempotent, so the client opts in.
        .layer(RetryLayer::builder(budget).retry_non_idempotent().build()?)
        .map_request(send_deadline::<ReplayBody<tonic::body::Body>>)
        .map_request(|req: http::Request<ReplayBody<tonic::body::Body>>| {
            req.map(tonic::body::Body::new)
        })
        // Unary answers: their status is read even when it comes in the trailers.
        .layer(ReadTrailersLayer::new())
        .service(channel);
    Ok(tonic::client::Grpc::new(stack))
}

/// The body of the client stack's answers: the channel's, read for its trailers, or the
/// `ClientRefusalLayer`'s empty one.
type ClientBody = ResponseBody<backstop::grpc::TrailersBody<tonic::body::Body>>;

/// What `client` returns: a clonable tonic transport service.
trait GrpcStack:
    tonic::client::GrpcService<
        tonic::body::Body,
        ResponseBody = ClientBody,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<T> GrpcStack for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = ClientBody,
            Error = BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// One call: its status code (0 for OK) and how long it took.
async fn call<T: GrpcStack>(
    mut client: tonic::client::Grpc<T>,
    id: u64,
) -> (tonic::Code, Duration) {
    let started = Instant::now();
    let mut request = Request::new(id);
    request
        .metadata_mut()
        .insert(CALL_ID, MetadataValue::from(id));
    let code = match client.ready().await {
        Err(_) => tonic::Code::Unavailable,
        Ok(()) => {
            let answer: Result<Response<u64>, Status> = client
                .unary(request, PathAndQuery::from_static(METHOD), U64Codec)
                .await;
            match answer {
                Ok(res) if *res.get_ref() == id + 1 => tonic::Code::Ok,
                Ok(_) => tonic::Code::DataLoss,
                Err(status) => {
                    if std::env::var_os("GRPC_SERVICE_DEBUG").is_some() {
                        eprintln!("call {id}: {status:?}");
                    }
                    status.code()
                }
            }
        }
    };
    (code, started.elapsed())
}

/// Every figure the run measured.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) goodput: f64,
    /// Served in time ÷ capacity at 1× capacity, measured in the same run.
    pub(crate) baseline_goodput: f64,
    pub(crate) overload_calls: u64,
    pub(crate) served_in_time: u64,
    pub(crate) overload_code: u32,
    pub(crate) refusal_codes: BTreeMap<u32, u64>,
    pub(crate) client_codes: BTreeMap<String, u64>,
    pub(crate) unavailable_calls: u64,
    pub(crate) unavailable_retried: u64,
    pub(crate) retried_unavailable: f64,
    pub(crate) unavailable_ok: u64,
    pub(crate) retry_gaps_ms: Vec<u64>,
    pub(crate) pushback_respected: bool,
    pub(crate) exhausted_calls: u64,
    pub(crate) exhausted_codes: BTreeMap<String, u64>,
    pub(crate) retried_exhausted: u64,
    pub(crate) deadline_seen_ms: u64,
}

async fn run() -> Result<Summary, BoxError> {
    let stats = Arc::new(ServerStats::default());
    let (addr, stop) = start_server(stats.clone()).await?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let budget = RetryBudget::builder("grpc_client").build()?;
    let grpc = client(channel, budget)?;

    // The baseline: the same client and server at 1× capacity, for as long.
    let (_, baseline_served, _) = open_loop(&grpc, CAPACITY_PER_SEC, 3_000_000).await?;
    // The baseline's own refusals are not phase 1's.
    stats.refusal_codes.lock().unwrap().clear();

    // Phase 1: 3× capacity, open loop.
    stats.mode.store(SERVE, Relaxed);
    let (client_codes, served_in_time, total) =
        open_loop(&grpc, CAPACITY_PER_SEC * OVERLOAD_FACTOR, 0).await?;
    let capacity_calls = CAPACITY_PER_SEC * OVERLOAD_FOR.as_secs_f64();
    let refusal_codes = stats.refusal_codes.lock().unwrap().clone();
    let overload_code = refusal_codes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or(0, |(code, _)| *code);

    // Phase 2: UNAVAILABLE with a pushback, once per call.
    stats.mode.store(UNAVAILABLE_ONCE, Relaxed);
    let codes = closed_loop(&grpc, 1_000_000).await?;
    let unavailable_ok = codes.get("Ok").copied().unwrap_or(0);
    let unavailable_calls = stats.firsts[usize::from(UNAVAILABLE_ONCE)].load(Relaxed);
    let unavailable_retried = stats.retries[usize::from(UNAVAILABLE_ONCE)].load(Relaxed);
    let retry_gaps_ms = stats.retry_gaps_ms.lock().unwrap().clone();
    // Respected only if some retry was measured and none came early.
    let pushback_respected = !retry_gaps_ms.is_empty()
        && retry_gaps_ms
            .iter()
            .all(|gap| *gap >= UNAVAILABLE_PUSHBACK_MS);

    // Phase 3: RESOURCE_EXHAUSTED with a pushback, every attempt.
    stats.mode.store(EXHAUSTED, Relaxed);
    let exhausted_codes = closed_loop(&grpc, 2_000_000).await?;
    let exhausted_calls = stats.firsts[usize::from(EXHAUSTED)].load(Relaxed);
    let retried_exhausted = stats.retries[usize::from(EXHAUSTED)].load(Relaxed);

    stop.send(()).ok();
    Ok(Summary {
        goodput: served_in_time as f64 / capacity_calls,
        baseline_goodput: baseline_served as f64 / capacity_calls,
        overload_calls: total,
        served_in_time,
        overload_code,
        refusal_codes,
        client_codes,
        unavailable_calls,
        unavailable_retried,
        retried_unavailable: unavailable_retried as f64 / unavailable_calls.max(1) as f64,
        unavailable_ok,
        retry_gaps_ms,
        pushback_respected,
        exhausted_calls,
        exhausted_codes,
        retried_exhausted,
        deadline_seen_ms: stats.deadline_seen_ms.load(Relaxed),
    })
}

/// Calls at `rate` a second for `OVERLOAD_FOR`, each on its own task (an open loop: a slow
/// answer does not slow the next call): the codes the caller saw, the calls answered OK within
/// the deadline, and the calls sent.
async fn open_loop<T: GrpcStack>(
    grpc: &tonic::client::Grpc<T>,
    rate: f64,
    first_id: u64,
) -> Result<(BTreeMap<String, u64>, u64, u64), BoxError> {
    let total = (rate * OVERLOAD_FOR.as_secs_f64()) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::with_capacity(total as usize);
    for id in first_id..first_id + total {
        tick.tick().await;
        calls.push(tokio::spawn(call(grpc.clone(), id)));
    }
    let mut codes = BTreeMap::new();
    let mut served_in_time = 0;
    for c in calls {
        let (code, took) = c.await?;
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
        if code == tonic::Code::Ok && took <= CALL_DEADLINE {
            served_in_time += 1;
        }
    }
    Ok((codes, served_in_time, total))
}

/// `PHASE_CALLS` calls, `PHASE_CONCURRENCY` at a time; the codes the caller saw.
async fn closed_loop<T: GrpcStack>(
    grpc: &tonic::client::Grpc<T>,
    first_id: u64,
) -> Result<BTreeMap<String, u64>, BoxError> {
    let per_worker = PHASE_CALLS / PHASE_CONCURRENCY;
    let workers: Vec<_> = (0..PHASE_CONCURRENCY)
        .map(|w| {
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in 0..per_worker {
                    let (code, _) = call(grpc.clone(), first_id + w * per_worker + i).await;
                    codes.push(code);
                }
                codes
            })
        })
        .collect();
    let mut seen = BTreeMap::new();
    for w in workers {
        for code in w.await? {
            *seen.entry(format!("{code:?}")).or_insert(0) += 1;
        }
    }
    Ok(seen)
}

/// The whole run under [`RUN_BOUND`].
pub(crate) async fn run_bounded() -> Result<Summary, BoxError> {
    tokio::time::timeout(RUN_BOUND, run()).await?
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let s = run_bounded().await?;
    println!(
        "baseline (1x capacity, {:.1} s): goodput {:.2} of capacity",
        OVERLOAD_FOR.as_secs_f64(),
        s.baseline_goodput
    );
    println!(
        "phase 1 (3x capacity): {} calls in {:.1} s against a capacity of {:.0}; {} served in time; client saw {:?}; server refusals by code {:?}",
        s.overload_calls,
        OVERLOAD_FOR.as_secs_f64(),
        CAPACITY_PER_SEC * OVERLOAD_FOR.as_secs_f64(),
        s.served_in_time,
        s.client_codes,
        s.refusal_codes
    );
    println!(
        "phase 2 (UNAVAILABLE once, pushback {UNAVAILABLE_PUSHBACK_MS} ms): {} calls, {} retried, {} ended OK; retry gaps (ms) min {:?} max {:?}",
        s.unavailable_calls,
        s.unavailable_retried,
        s.unavailable_ok,
        s.retry_gaps_ms.iter().min(),
        s.retry_gaps_ms.iter().max()
    );
    println!(
        "phase 3 (RESOURCE_EXHAUSTED, pushback {EXHAUSTED_PUSHBACK_MS} ms): {} calls reached the server, {} retries; client saw {:?}",
        s.exhausted_calls, s.retried_exhausted, s.exhausted_codes
    );
    println!(
        "3x against 1x: goodput ratio {:.2}",
        s.goodput / s.baseline_goodput.max(f64::MIN_POSITIVE)
    );
    println!(
        "summary: goodput={:.2} overload_code={} retried_unavailable={:.2} retried_exhausted={} pushback_respected={} deadline_seen_ms={}",
        s.goodput,
        s.overload_code,
        s.retried_unavailable,
        s.retried_exhausted,
        u8::from(s.pushback_respected),
        s.deadline_seen_ms
    );
    Ok(())
}
