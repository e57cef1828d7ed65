//! Three axum services, A → B → C, on loopback: backstop's HTTP edge end to end.
//!
//! Each service is an axum `Router` with backstop's server stack applied by `Router::layer`, no
//! glue between them:
//!
//! `ErrorToResponseLayer → inherit_deadline → LittleLayer → ThrottleLayer (a quota per
//! x-client-id) → LifoQueueLayer → TimeoutLayer (the server's own budget) → ScopeLayer → handler`
//!
//! and each handler calls the next service through backstop's client stack, which it gets
//! through axum's `State`:
//!
//! `LittleLayer → TimeoutLayer (overall) → ReplayBodyLayer → RetryLayer (a shared budget) →
//! HedgeLayer → TokenBucketLayer → TimeoutLayer (per attempt) → send_deadline → hyper-util`
//!
//! No handler has any deadline code: A's server stack gives its caller's request a budget, the
//! `ScopeLayer` makes it the deadline of every call A's handler makes, each client timeout takes
//! its fraction of what is left, `send_deadline` writes the rest into `grpc-timeout` and
//! `backstop-timeout-ms`, and B's and C's `inherit_deadline` read it back. With the settings
//! here C gets at most 2000 ms × 0.9 (A's overall timeout) capped at 800 ms (A's per-attempt
//! timeout), × 0.9 (B's server) × 0.9 (B's overall) × 0.5 (B's per-attempt) × 0.9 (C's server):
//! about 290 ms, less whatever the hops took.
//!
//! The caller (this program's `main`, a plain hyper-util client) then shows, step by step:
//! 1. the deadline each hop's handler has (`hop1_budget_ms` is A's, the budget A gives its
//!    caller's request; `hop3_deadline_ms` is C's);
//! 2. a POST with a streamed, non-`Clone` body that A forwards to B marked [`Idempotent`]: B
//!    reads it all and fails the first one with a 500, A's client retries it with the replayed
//!    body, and B reads it all again and answers 200 (`streamed_retry_ok=1` only if the caller
//!    got 200 and B read every byte, equal to those sent, on both attempts);
//! 3. B overloaded, through A: one client past its quota (10 a minute) gets 429, a crowd of
//!    slow requests past B's small LIFO queue (2 in flight, 2 waiting) gets 503, both with
//!    `Retry-After`; A's client retries neither, and A passes them up as they are;
//! 4. a request whose deadline passes while C works: C answers 504, and so does everyone above.
//!    How much C worked on it is set against a baseline measured in the same run, the same
//!    work asked of C with no deadline, as a chain without deadline propagation would ask it.
//!    (A 504 is retryable to the HTTP classifier, so B's client may retry it once with what
//!    time is left, and C then sees two attempts: the run prints how many it received.)
//!
//! It ends with one line:
//! `summary: hop1_budget_ms=N hop3_deadline_ms=N streamed_retry_ok=0|1 statuses=S`, every
//! figure measured in the run, `S` the statuses the caller saw. Real sockets and the real clock
//! (about 2 s in all); every request loop is bounded, the whole run is under a 60 s timeout, and
//! the servers shut down gracefully. `tests/axum_service.rs` runs it and checks each claim.
//!
//!     cargo run --release --example axum_service

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{Route, get, post};
use backstop::BoxError;
use backstop::context::{self, ScopeLayer};
use backstop::hedge::HedgeLayer;
use backstop::http::{ErrorToResponseLayer, ReplayBody, ReplayBodyLayer, error_response};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::retry::{ATTEMPT_HEADER, Idempotent, RetryBudget, RetryLayer};
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ThrottleLayer};
use backstop::timeout::TimeoutLayer;
use backstop::timeout::headers::{inherit_deadline, send_deadline};
use backstop::token_bucket::{TokenBucket, TokenBucketLayer};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The whole run, servers included, ends within this.
const RUN_BOUND: Duration = Duration::from_secs(60);
/// One request of the caller's, answer and body, ends within this.
const REQUEST_BOUND: Duration = Duration::from_secs(10);

/// Requests one client sends past B's quota, back to back.
const GREEDY_REQUESTS: usize = 20;
/// Slow requests sent to B at once, from as many clients.
const CROWD: usize = 8;
/// How long B works on each of them.
const CROWD_WORK: Duration = Duration::from_millis(200);
/// How long C is asked to work in the last step: longer than the deadline it inherits.
const LATE_WORK: Duration = Duration::from_secs(1);

/// The client identity header the throttles read, which each handler passes on.
const CLIENT_ID: &str = "x-client-id";

/// One service's server stack.
#[derive(Debug, Clone, Copy)]
struct ServerConfig {
    /// Names the metric series of the service's layers and of its client's.
    name: &'static str,
    /// How the service calls itself in its answers and in `?end=`.
    label: &'static str,
    /// The server's own budget for a request: on A, the budget it gives its caller's request.
    budget: Duration,
    /// Each client's (`x-client-id`'s) burst: a quota per minute, so the refusals do not depend
    /// on how fast this machine sends.
    quota_per_minute: u32,
    /// Requests the handler may serve at once.
    in_flight: usize,
    /// Requests that may wait for a slot; one more is refused with a 503.
    waiting: usize,
}

const A: ServerConfig = ServerConfig {
    name: "hop_a",
    label: "A",
    budget: Duration::from_secs(2),
    quota_per_minute: 600,
    in_flight: 32,
    waiting: 32,
};
/// Small on purpose, so the caller can overload it.
const B: ServerConfig = ServerConfig {
    name: "hop_b",
    label: "B",
    budget: Duration::from_secs(2),
    quota_per_minute: 10,
    in_flight: 2,
    waiting: 2,
};
const C: ServerConfig = ServerConfig {
    name: "hop_c",
    label: "C",
    budget: Duration::from_secs(2),
    quota_per_minute: 600,
    in_flight: 32,
    waiting: 32,
};

/// What one service saw, read by the caller at the end of each step.
#[derive(Debug, Default)]
struct HopStats {
    /// The errors this service's own stack turned into answers, by status (429, 503, 504...).
    answered_errors: Mutex<BTreeMap<u16, u64>>,
    /// Requests that reached the handler.
    arrived: AtomicU64,
    /// Of those, retries (`backstop-attempt: 2`).
    retries: AtomicU64,
    /// Each upload B read to its end: the attempt number and the bytes.
    uploads: Mutex<Vec<(u32, Bytes)>>,
    /// Time spent working (`work_ms`), finished or cut off, in microseconds.
    busy_us: AtomicU64,
}

/// Adds the time from its start to its drop to `busy_us`: a handler cut off by its deadline
/// is dropped half-way, and its work so far still counts.
struct Working<'a> {
    stats: &'a HopStats,
    since: tokio::time::Instant,
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        let spent = self.since.elapsed().as_micros() as u64;
        self.stats.busy_us.fetch_add(spent, Relaxed);
    }
}

impl HopStats {
    fn answered(&self) -> BTreeMap<u16, u64> {
        self.answered_errors.lock().expect("not poisoned").clone()
    }
}

/// Every layer of the client stack boxed into one cloneable type, for axum's `State`.
type HttpClient = BoxCloneSyncService<Request, http::Response<Incoming>, BoxError>;

/// The server stack, as one layer for `Router::layer`: every error becomes its answer
/// (429/503 with `Retry-After`, 504, 500), so the routes stay infallible as axum wants.
fn server_stack(
    cfg: ServerConfig,
    stats: Arc<HopStats>,
) -> Result<
    impl Layer<
        Route,
        Service: Service<
            Request,
            Response: IntoResponse + 'static,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
                     + Send
                     + Sync
                     + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
    BoxError,
> {
    let meter = LittleMeter::builder(cfg.name)
        .capacity(cfg.in_flight as f64)
        .build()?;
    let quota = Quota::per_minute(NonZeroU32::new(cfg.quota_per_minute).ok_or("quota > 0")?);
    let throttle = ThrottleLayer::builder(cfg.name, HeaderKey::default())
        .quotas(ClientQuotas::builder(cfg.name, quota).build()?)
        .build()?;
    let queue = LifoQueueLayer::builder(cfg.name)
        .max_in_flight(cfg.in_flight)
        .max_waiting(cfg.waiting)
        // Waiters in this run wait one request's work (200 ms): past the default 100 ms the
        // queue would shed them as stale, which is not what this step shows.
        .interval(Duration::from_secs(1))
        .hold_until_body_end()
        .build()?;
    // Count each error where it was answered, so the caller can tell whose refusal it saw.
    let on_error = move |_err: &BoxError, status: StatusCode| {
        *stats
            .answered_errors
            .lock()
            .expect("not poisoned")
            .entry(status.as_u16())
            .or_default() += 1;
    };
    Ok(ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new().on_error(on_error))
        .map_request(inherit_deadline::<Body>)
        .layer(LittleLayer::new(meter))
        .layer(throttle)
        .layer(queue)
        .layer(TimeoutLayer::new(cfg.budget)?)
        .layer(ScopeLayer::new()))
}

/// The client stack over hyper-util's pooled client, boxed for the handlers' `State`.
fn client_stack(name: &str) -> Result<HttpClient, BoxError> {
    let transport = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http::<ReplayBody<Body>>();
    let meter = LittleMeter::builder(name).build()?;
    // A few tokens at the start, so a young client can retry its first failures.
    let budget = RetryBudget::builder(name).initial_tokens(3.0).build()?;
    let bucket = TokenBucket::builder(name)
        .rate(1000.0)
        .capacity(100.0)
        .build()?;
    let client = ServiceBuilder::new()
        .layer(LittleLayer::new(meter))
        // The whole call, the retry included: 90% of the handler's deadline at most.
        .layer(TimeoutLayer::new(Duration::from_secs(2))?)
        // Streamed bodies kept (up to 64 KiB) so the retry and the hedge can send them again.
        .layer(ReplayBodyLayer::new(name))
        .layer(RetryLayer::builder(budget).build()?)
        .layer(HedgeLayer::builder(name).build()?)
        .layer(TokenBucketLayer::builder(bucket).build()?)
        // One attempt: at most 800 ms, and half of what is left, so a retry still has time.
        .layer(
            TimeoutLayer::builder()
                .timeout(Duration::from_millis(800))
                .fraction(0.5)
                .build()?,
        )
        .map_request(send_deadline::<ReplayBody<Body>>)
        .service(transport)
        .map_err(BoxError::from);
    Ok(BoxCloneSyncService::new(client))
}

/// A service's handlers' state: its label, the next service and the client to reach it.
#[derive(Clone)]
struct Hop {
    label: &'static str,
    next: Option<String>,
    client: HttpClient,
    stats: Arc<HopStats>,
}

impl Hop {
    /// Counts an arrival, and returns its attempt number (1 unless the client marked a retry).
    fn arrive(&self, headers: &HeaderMap) -> u32 {
        self.stats.arrived.fetch_add(1, Relaxed);
        let attempt = headers
            .get(ATTEMPT_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        if attempt >= 2 {
            self.stats.retries.fetch_add(1, Relaxed);
        }
        attempt
    }

    /// A request to the next service, carrying the caller's client id (identity, not time).
    fn outgoing(
        &self,
        path_and_query: &str,
        method: http::Method,
        body: Body,
        from: &HeaderMap,
    ) -> Option<Request> {
        let next = self.next.as_ref()?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{next}{path_and_query}"))
            .body(body)
            .ok()?;
        if let Some(id) = from.get(CLIENT_ID) {
            req.headers_mut().insert(CLIENT_ID, id.clone());
        }
        Some(req)
    }
}

/// The deadline this handler runs under, as its scope holds it, in whole milliseconds.
fn deadline_line(hop: &Hop) -> String {
    let left = context::current_deadline()
        .map(|d| d.remaining().as_millis().to_string())
        .unwrap_or_else(|| "none".to_owned());
    format!("{} deadline_ms={left}\n", hop.label)
}

/// `/chain?end=B&work_ms=N`: each service reports its deadline and calls the next, until the
/// service named by `end` (C by default), which works `work_ms` and answers.
async fn chain(State(hop): State<Hop>, req: Request) -> Response {
    hop.arrive(req.headers());
    let line = deadline_line(&hop);
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let work = Duration::from_millis(param("work_ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let ends_here = hop.next.is_none() || param("end") == Some(hop.label);
    if ends_here {
        let _working = Working {
            stats: &hop.stats,
            since: tokio::time::Instant::now(),
        };
        tokio::time::sleep(work).await;
        return line.into_response();
    }
    let Some(out) = hop.outgoing(
        &format!("/chain?{query}"),
        http::Method::GET,
        Body::empty(),
        req.headers(),
    ) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // No deadline code: the scope gives this call the deadline of the request being served.
    relay(hop.client.clone().oneshot(out).await, line).await
}

/// A's `/upload`: forwards the caller's streamed body to B, marked safe to send twice.
async fn forward_upload(State(hop): State<Hop>, req: Request) -> Response {
    hop.arrive(req.headers());
    let line = deadline_line(&hop);
    let (parts, body) = req.into_parts();
    let Some(mut out) = hop.outgoing("/upload", http::Method::POST, body, &parts.headers) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // A POST is retried only when marked: the caller's upload is idempotent (say, keyed by a
    // content hash), which only the application knows.
    out.extensions_mut().insert(Idempotent);
    relay(hop.client.clone().oneshot(out).await, line).await
}

/// B's `/upload`: reads the whole body, keeps it for the caller to check, and fails the first
/// upload once with a 500 (after reading it), as a flaky disk would.
async fn receive_upload(State(hop): State<Hop>, req: Request) -> Response {
    let attempt = hop.arrive(req.headers());
    let bytes = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let len = bytes.len();
    let first = {
        let mut uploads = hop.stats.uploads.lock().expect("not poisoned");
        uploads.push((attempt, bytes));
        uploads.len() == 1
    };
    if first {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("B read {len} bytes and failed\n"),
        )
            .into_response()
    } else {
        format!("B read {len} bytes on attempt {attempt}\n").into_response()
    }
}

/// The next service's answer, passed up with this service's line in front of its body: its
/// status and headers (`Retry-After`, the retried marker) go up unchanged. A client error (the
/// deadline passed, a refusal of this service's own client) becomes its status.
async fn relay(result: Result<http::Response<Incoming>, BoxError>, line: String) -> Response {
    let res = match result {
        Ok(res) => res,
        // The answer a server stack gives the same error: a refusal keeps its `Retry-After`.
        Err(err) => {
            let mut res: Response = error_response(err.as_ref());
            *res.body_mut() = Body::from(line);
            return res;
        }
    };
    let (mut parts, body) = res.into_parts();
    let below = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return (StatusCode::BAD_GATEWAY, line).into_response(),
    };
    // The length changes and the connection is ours: hop-by-hop headers stay behind.
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ] {
        parts.headers.remove(name);
    }
    let mut text = line.into_bytes();
    text.extend_from_slice(&below);
    Response::from_parts(parts, Body::from(text))
}

/// A service running on 127.0.0.1 until [`stop`](Self::stop).
struct Running {
    addr: SocketAddr,
    stats: Arc<HopStats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: no new connections, in-flight requests finish.
    async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

/// Starts service `cfg` on a port the OS picks; `next` is the service its handlers call.
async fn start(cfg: ServerConfig, next: Option<String>) -> Result<Running, BoxError> {
    let stats = Arc::new(HopStats::default());
    let hop = Hop {
        label: cfg.label,
        next,
        client: client_stack(&format!("{}_client", cfg.name))?,
        stats: stats.clone(),
    };
    let upload = if cfg.label == B.label {
        post(receive_upload)
    } else {
        post(forward_upload)
    };
    let app = Router::new()
        .route("/chain", get(chain))
        .route("/upload", upload)
        .layer(server_stack(cfg, stats.clone())?)
        .with_state(hop);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .await
    });
    Ok(Running {
        addr,
        stats,
        stop,
        task,
    })
}

/// What the caller got back from one request.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

/// The caller: a plain hyper-util client, no backstop layer.
type Caller = Client<HttpConnector, Body>;

async fn call(caller: &Caller, req: Request) -> Result<Answer, BoxError> {
    tokio::time::timeout(REQUEST_BOUND, async {
        let res = caller.request(req).await?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
    .await?
}

fn get_from(url: String, client: &str) -> Result<Request, BoxError> {
    Ok(http::Request::get(url)
        .header(CLIENT_ID, client)
        .body(Body::empty())?)
}

/// The `deadline_ms` a service's line reports in a `/chain` answer.
fn reported_ms(body: &str, label: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(" deadline_ms="))?
        .parse()
        .ok()
}

/// The statuses of `answers` as "200×10, 429×10 (Retry-After: 6 ×10)": for refusals, the
/// `Retry-After` values seen and how often ("none" for a refusal without one).
fn tally(answers: &[Answer]) -> String {
    let mut counts: BTreeMap<u16, BTreeMap<&str, u64>> = BTreeMap::new();
    for a in answers {
        let after = a.retry_after.as_deref().unwrap_or("none");
        *counts
            .entry(a.status.as_u16())
            .or_default()
            .entry(after)
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, afters)| {
            let n: u64 = afters.values().sum();
            match status {
                429 | 503 => {
                    let afters: Vec<String> =
                        afters.iter().map(|(v, k)| format!("{v} ×{k}")).collect();
                    format!("{status}×{n} (Retry-After: {})", afters.join(", "))
                }
                _ => format!("{status}×{n}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(map: &BTreeMap<u16, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the run measured. (`pub(crate)` for `tests/axum_service.rs`, which runs this file
/// and checks every field; `main` prints the summary's four.)
#[derive(Debug)]
#[allow(dead_code, reason = "tests/axum_service.rs reads every field")]
pub(crate) struct Summary {
    /// The deadline A's handler had: the budget A's server stack gave its caller's request.
    pub(crate) hop1_budget_ms: u64,
    /// The deadline B's handler had.
    pub(crate) hop2_deadline_ms: u64,
    /// The deadline C's handler had.
    pub(crate) hop3_deadline_ms: u64,
    /// The streamed POST got 200, and B read all of its bytes on both attempts.
    pub(crate) streamed_retry_ok: bool,
    /// Every status the caller saw.
    pub(crate) statuses: BTreeSet<u16>,
    /// The 429 and 503 answers the caller saw in step 3, and how many carried `Retry-After`.
    pub(crate) refusals: u64,
    pub(crate) refusals_with_retry_after: u64,
    /// Retries B received during step 3 (an overload answer must never be retried).
    pub(crate) overload_retries: u64,
    /// Step 4: the caller's status, the attempts C received, and C's work on them.
    pub(crate) late_status: u16,
    pub(crate) late_c_attempts: u64,
    /// Retries B received in step 4: a failure already retried below (B's client marks it
    /// `backstop-retried`, B passes the header up) is not retried again by A.
    pub(crate) late_b_retries: u64,
    pub(crate) late_c_work_ms: u64,
    /// The same work asked of C directly, with no deadline: what C spends when no one tells it
    /// the caller has left.
    pub(crate) baseline_c_work_ms: u64,
}

/// C's work time since `before`, in milliseconds.
fn work_since(stats: &HopStats, before: u64) -> u64 {
    (stats.busy_us.load(Relaxed) - before) / 1000
}

/// Runs the four steps (and the baseline) against three fresh services, printing each answer.
pub(crate) async fn run() -> Result<Summary, BoxError> {
    // C first, so B knows where to call, then A.
    let c = start(C, None).await?;
    let b = start(B, Some(c.url())).await?;
    let a = start(A, Some(b.url())).await?;
    let caller: Caller = Client::builder(TokioExecutor::new()).build_http();
    let mut statuses = BTreeSet::new();

    // 1. The deadline each hop's handler runs under. The caller sends none: A's server stack
    //    gives the request its budget, and each client timeout on the way takes its fraction.
    println!("1. GET A/chain → B → C, no deadline from the caller");
    let probe = call(&caller, get_from(format!("{}/chain", a.url()), "probe")?).await?;
    statuses.insert(probe.status.as_u16());
    let hop1 = reported_ms(&probe.body, "A").ok_or("A reported no deadline")?;
    let hop2 = reported_ms(&probe.body, "B").ok_or("B reported no deadline")?;
    let hop3 = reported_ms(&probe.body, "C").ok_or("C reported no deadline")?;
    println!(
        "   {}: A's handler has {hop1} ms (A's budget for its caller), B's {hop2} ms, C's {hop3} ms \
         (C/A = {:.3})",
        probe.status,
        hop3 as f64 / hop1.max(1) as f64
    );

    // 2. A streamed POST, forwarded by A to B, failing once on B.
    println!(
        "2. POST A/upload with a streamed body (not Clone), forwarded to B, which fails it once"
    );
    let chunks: Vec<Bytes> = (0..4u8)
        .map(|i| Bytes::from(vec![b'a' + i; 4096]))
        .collect();
    let sent: Bytes = chunks.concat().into();
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let upload = http::Request::post(format!("{}/upload", a.url()))
        .header(CLIENT_ID, "uploader")
        .body(Body::from_stream(stream))?;
    let upload = call(&caller, upload).await?;
    statuses.insert(upload.status.as_u16());
    let reads = b.stats.uploads.lock().expect("not poisoned").clone();
    for (attempt, bytes) in &reads {
        let same = if *bytes == sent {
            "equal to"
        } else {
            "NOT equal to"
        };
        println!(
            "   B read attempt {attempt}: {} bytes, {same} the {} sent",
            bytes.len(),
            sent.len()
        );
    }
    let streamed_retry_ok = upload.status == StatusCode::OK
        && reads.len() == 2
        && reads.iter().all(|(_, bytes)| *bytes == sent)
        && reads[1].0 == 2;
    println!(
        "   {}: {}",
        upload.status,
        upload.body.lines().last().unwrap_or("")
    );

    // 3a. One client past B's quota: B's 429s go back to the caller, never retried by A.
    let b_retries_before = b.stats.retries.load(Relaxed);
    println!("3. B overloaded (requests through A that end at B)");
    let mut greedy = Vec::with_capacity(GREEDY_REQUESTS);
    for _ in 0..GREEDY_REQUESTS {
        let req = get_from(format!("{}/chain?end=B", a.url()), "greedy")?;
        greedy.push(call(&caller, req).await?);
    }
    println!(
        "   {GREEDY_REQUESTS} back-to-back requests from one client (B's quota: {} a minute): {}",
        B.quota_per_minute,
        tally(&greedy)
    );

    // 3b. More slow requests at once than B's queue holds, each from its own client.
    let url = format!("{}/chain?end=B&work_ms={}", a.url(), CROWD_WORK.as_millis());
    let mut crowd = tokio::task::JoinSet::new();
    for i in 0..CROWD {
        let req = get_from(url.clone(), &format!("crowd-{i}"))?;
        let caller = caller.clone();
        crowd.spawn(async move { call(&caller, req).await });
    }
    let mut crowd_answers = Vec::with_capacity(CROWD);
    while let Some(answer) = crowd.join_next().await {
        crowd_answers.push(answer??);
    }
    println!(
        "   {CROWD} requests at once, {} ms of work each (B: {} in flight, {} waiting): {}",
        CROWD_WORK.as_millis(),
        B.in_flight,
        B.waiting,
        tally(&crowd_answers)
    );
    let overload_retries = b.stats.retries.load(Relaxed) - b_retries_before;
    println!(
        "   refusals answered by B's stack: {}; by A's: {}; retries B received: {overload_retries}",
        show(&b.stats.answered()),
        show(&a.stats.answered()),
    );
    let overloaded: Vec<&Answer> = greedy.iter().chain(&crowd_answers).collect();
    statuses.extend(overloaded.iter().map(|a| a.status.as_u16()));
    let refused = || {
        overloaded
            .iter()
            .filter(|a| matches!(a.status.as_u16(), 429 | 503))
    };
    let refusals = refused().count() as u64;
    let refusals_with_retry_after = refused().filter(|a| a.retry_after.is_some()).count() as u64;

    // 4. C is asked to work longer than the deadline it inherits.
    println!(
        "4. GET A/chain → B → C, C asked to work {} ms",
        LATE_WORK.as_millis()
    );
    let b_retries = b.stats.retries.load(Relaxed);
    let (c_arrived, c_busy, c_504) = (
        c.stats.arrived.load(Relaxed),
        c.stats.busy_us.load(Relaxed),
        c.stats.answered().get(&504).copied().unwrap_or(0),
    );
    let url = format!("{}/chain?work_ms={}", a.url(), LATE_WORK.as_millis());
    let started = tokio::time::Instant::now();
    let late = call(&caller, get_from(url, "late")?).await?;
    let late_ms = started.elapsed().as_millis();
    statuses.insert(late.status.as_u16());
    let late_c_attempts = c.stats.arrived.load(Relaxed) - c_arrived;
    let late_c_work_ms = work_since(&c.stats, c_busy);
    let late_b_retries = b.stats.retries.load(Relaxed) - b_retries;
    println!(
        "   {} after {late_ms} ms; C received {late_c_attempts} attempt(s) and answered 504 to {}, \
         working {late_c_work_ms} ms in all; B received {late_b_retries} retries",
        late.status,
        c.stats.answered().get(&504).copied().unwrap_or(0) - c_504,
    );

    // The baseline: the same work asked of C with no deadline, as a call without deadline
    // propagation would arrive. C works it to the end for a caller that has long left.
    let c_busy = c.stats.busy_us.load(Relaxed);
    let url = format!("{}/chain?work_ms={}", c.url(), LATE_WORK.as_millis());
    let baseline = call(&caller, get_from(url, "baseline")?).await?;
    let baseline_c_work_ms = work_since(&c.stats, c_busy);
    println!(
        "   baseline, the same work asked of C with no deadline: {}, C worked {baseline_c_work_ms} ms \
         (with the deadline carried: {:.2} of that)",
        baseline.status,
        late_c_work_ms as f64 / baseline_c_work_ms.max(1) as f64
    );

    drop(caller);
    a.stop().await?;
    b.stop().await?;
    c.stop().await?;
    Ok(Summary {
        hop1_budget_ms: hop1,
        hop2_deadline_ms: hop2,
        hop3_deadline_ms: hop3,
        streamed_retry_ok,
        statuses,
        refusals,
        refusals_with_retry_after,
        overload_retries,
        late_status: late.status.as_u16(),
        late_c_attempts,
        late_b_retries,
        late_c_work_ms,
        baseline_c_work_ms,
    })
}

/// The whole run under [`RUN_BOUND`].
pub(crate) async fn run_bounded() -> Result<Summary, BoxError> {
    tokio::time::timeout(RUN_BOUND, run()).await?
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run_bounded().await?;
    let statuses: Vec<String> = summary.statuses.iter().map(u16::to_string).collect();
    println!(
        "summary: hop1_budget_ms={} hop3_deadline_ms={} streamed_retry_ok={} statuses={}",
        summary.hop1_budget_ms,
        summary.hop3_deadline_ms,
        u8::from(summary.streamed_retry_ok),
        statuses.join(",")
    );
    Ok(())
}
