//! Every layer against its tower (or governor) twin, measured the way users run them: with a
//! Prometheus recorder installed, so each series update a layer makes costs what it costs in
//! production.
//!
//! - Interleaved rounds: each round times every pair, baseline and backstop back to back (the
//!   order swapped every other round), so drift in machine load hits both sides alike; a ratio
//!   is the median over rounds of backstop's time per call ÷ the baseline's in the same round.
//! - Requests are built before the timed loop (a `Vec` drained inside it), on one current-thread
//!   runtime shared by both sides, the inner service ready at the first poll: the layer's own
//!   bookkeeping is all that differs.
//! - A counting global allocator gives allocations per call for each side (outside the timed
//!   runs) and the bytes one hedge layer holds.
//!
//! Run: `cargo bench --bench ratios` (about half a minute). The 2-thread rows mean something only
//! on an otherwise idle machine with two free cores. It ends with one line:
//! `summary: timeout=R little=R retry=R hedge=R backpressure=R lifo=R throttle=R pid=R
//! bucket_1t=R bucket_2t=R meter_2t=R extra_allocs=N hedge_kb=N`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use backstop::BoxError;
use backstop::backpressure::BackpressureLayer;
use backstop::classify::Outcome;
use backstop::hedge::{HedgeLayer, Idempotent, LatencyTracker};
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::pid::{AdmissionController, AdmissionLayer, signal_fn};
use backstop::retry::{RetryBudget, RetryKind, RetryLayer, RetryRequest};
use backstop::throttle::{ClientId, ClientQuotas, Quota, ShedFraction, ThrottleLayer};
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use backstop::token_bucket::{Clock, TokenBucket};
use http::Request;
use tokio::runtime::Runtime;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

// ---- counting allocator ------------------------------------------------------------------

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Counting is on only while allocations are measured: in the timed runs the allocator costs
/// what the system's does, so a path that allocates is not charged for the counting.
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // `const` and no destructor: reading it never allocates, so the allocator may use it.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note(bytes: isize, new_block: bool) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    LIVE_BYTES.fetch_add(bytes, Relaxed);
    if new_block {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize, true);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize, true);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout` (every path above forwards).
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize), false);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize, true);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// ---- requests ----------------------------------------------------------------------------

/// A plain request for the layers that need nothing of it (cloneable, no allocation).
#[derive(Clone)]
struct Req(u64);

impl HasDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        None
    }
    fn set_deadline(&mut self, _: Deadline) {}
}

impl RetryRequest for Req {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// An HTTP request with nothing in its extensions (the timeout's common case).
fn bare_http(_: u64) -> Request<()> {
    Request::new(())
}

/// An HTTP request as a hyper server hands it over: something is in its extensions already.
fn server_http(_: u64) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(42u32);
    req
}

/// An HTTP request marked idempotent, so both hedges would duplicate it.
fn idempotent_http(_: u64) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(Idempotent);
    req
}

fn plain(i: u64) -> Req {
    Req(i)
}

fn leaf<R: Send + 'static>()
-> impl Service<R, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|req: R| {
        black_box(&req);
        std::future::ready(Ok::<_, BoxError>(()))
    })
}

// ---- timing ------------------------------------------------------------------------------

const ITERS: u64 = 10_000;
const ROUNDS: usize = 61;
const ALLOC_CALLS: u64 = 2_000;

/// One side of a comparison: builds its own requests, then times them through its service.
trait Side {
    /// Nanoseconds per call over `n` calls.
    fn time(&mut self, rt: &Runtime, n: u64) -> f64;
    /// Allocations per call over `n` calls (outside any timing).
    fn allocs(&mut self, rt: &Runtime, n: u64) -> f64;
}

struct Driven<S, R> {
    svc: S,
    make: fn(u64) -> R,
    reqs: Vec<R>,
}

impl<S, R> Driven<S, R>
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    fn new(svc: S, make: fn(u64) -> R) -> Self {
        Self {
            svc,
            make,
            reqs: Vec::new(),
        }
    }

    async fn drain(svc: &mut S, reqs: &mut Vec<R>) {
        for req in reqs.drain(..) {
            let ready = svc.ready().await.unwrap();
            black_box(ready.call(req).await.unwrap());
        }
    }
}

impl<S, R> Side for Driven<S, R>
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    fn time(&mut self, rt: &Runtime, n: u64) -> f64 {
        self.reqs.extend((0..n).map(self.make));
        let (svc, reqs) = (&mut self.svc, &mut self.reqs);
        let elapsed = rt.block_on(async {
            let start = Instant::now();
            Self::drain(svc, reqs).await;
            start.elapsed()
        });
        elapsed.as_nanos() as f64 / n as f64
    }

    fn allocs(&mut self, rt: &Runtime, n: u64) -> f64 {
        self.reqs.extend((0..n).map(self.make));
        let (svc, reqs) = (&mut self.svc, &mut self.reqs);
        COUNTING.store(true, Relaxed);
        let before = allocs();
        rt.block_on(Self::drain(svc, reqs));
        let made = allocs() - before;
        COUNTING.store(false, Relaxed);
        made as f64 / n as f64
    }
}

/// Runs `run` on one thread per input, all released at once by the barrier `run` waits on;
/// the slowest thread's time. Without the barrier a short run on one thread can finish before
/// the next is spawned, and "2 threads" would measure one at a time.
fn on_threads<T: Send>(
    inputs: Vec<T>,
    run: impl Fn(T, &std::sync::Barrier) -> Duration + Sync,
) -> Duration {
    let (run, barrier) = (&run, &std::sync::Barrier::new(inputs.len()));
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|input| s.spawn(move || run(input, barrier)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

/// Runs `op` `iters` times on each of `threads` threads at once; ns per op per thread (the
/// slowest thread's wall time ÷ `iters`).
fn hammer<F: Fn() -> bool + Sync>(threads: usize, iters: u64, op: F) -> f64 {
    let slowest = on_threads(vec![(); threads], |(), barrier| {
        barrier.wait();
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..iters {
            n += u64::from(black_box(op()));
        }
        black_box(n);
        start.elapsed()
    });
    slowest.as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---- the pairs ---------------------------------------------------------------------------

struct Pair {
    name: &'static str,
    baseline: &'static str,
    base: Box<dyn Side>,
    ours: Box<dyn Side>,
}

fn pair(
    name: &'static str,
    baseline: &'static str,
    base: impl Side + 'static,
    ours: impl Side + 'static,
) -> Pair {
    Pair {
        name,
        baseline,
        base: Box::new(base),
        ours: Box::new(ours),
    }
}

const TIMEOUT: Duration = Duration::from_secs(1);
const LIMIT: usize = 1024;

fn tower_timeout<R: Send + 'static>() -> impl Service<R, Error = BoxError> {
    tower::timeout::TimeoutLayer::new(TIMEOUT).layer(leaf::<R>())
}

fn tower_limit() -> impl Service<Req, Error = BoxError> + Clone + Send {
    ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(LIMIT)
        .service(leaf::<Req>())
}

#[derive(Clone)]
struct TowerRetryPolicy(Arc<TpsBudget>);

impl tower::retry::Policy<Req, (), BoxError> for TowerRetryPolicy {
    type Future = std::future::Ready<()>;
    fn retry(&mut self, _: &mut Req, result: &mut Result<(), BoxError>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| std::future::ready(())),
        }
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[derive(Clone)]
struct TowerHedgePolicy;

impl tower::hedge::Policy<Request<()>> for TowerHedgePolicy {
    fn clone_request(&self, req: &Request<()>) -> Option<Request<()>> {
        Some(req.clone())
    }
    fn can_retry(&self, _: &Request<()>) -> bool {
        true
    }
}

fn throttle_key(req: &Req) -> Option<ClientId> {
    Some(ClientId::from(req.0 % 1_000))
}

fn pairs(rt: &Runtime) -> Vec<Pair> {
    let _guard = rt.enter();
    let mut out = Vec::new();

    out.push(pair(
        "timeout",
        "tower Timeout",
        Driven::new(tower_timeout(), bare_http),
        Driven::new(TimeoutLayer::new(TIMEOUT).unwrap().layer(leaf()), bare_http),
    ));

    out.push(pair(
        "timeout_server",
        "tower Timeout (not in the summary)",
        Driven::new(tower_timeout(), server_http),
        Driven::new(
            TimeoutLayer::new(TIMEOUT).unwrap().layer(leaf()),
            server_http,
        ),
    ));

    let meter = LittleMeter::builder("ratios_little").build().unwrap();
    out.push(pair(
        "little",
        "tower Timeout",
        Driven::new(tower_timeout(), plain),
        Driven::new(LittleLayer::new(meter).layer(leaf()), plain),
    ));

    let tower_retry =
        tower::retry::RetryLayer::new(TowerRetryPolicy(Arc::new(TpsBudget::default())))
            .layer(leaf::<Req>());
    let budget = RetryBudget::builder("ratios_retry").build().unwrap();
    out.push(pair(
        "retry",
        "tower Retry + TpsBudget",
        Driven::new(tower_retry, plain),
        Driven::new(RetryLayer::new(budget).layer(leaf()), plain),
    ));

    // Both hedges warmed up so that they would hedge (each has a delay): every call clones the
    // request, arms a timer and records a latency; the answer comes at the first poll.
    let tower_hedge = tower::hedge::Hedge::new_with_mock_latencies(
        leaf::<Request<()>>(),
        TowerHedgePolicy,
        10,
        0.95,
        Duration::from_secs(10),
        &[10; 100],
    );
    let hedge = HedgeLayer::builder("ratios_hedge")
        .min_samples(10)
        .build()
        .unwrap();
    let mut ours = Driven::new(hedge.layer(leaf()), idempotent_http);
    ours.time(rt, 100);
    assert!(hedge.current_delay().is_some(), "the hedge is warmed up");
    out.push(pair(
        "hedge",
        "tower Hedge",
        Driven::new(tower_hedge, idempotent_http),
        ours,
    ));

    let backpressure = BackpressureLayer::new("ratios_backpressure", LIMIT, 0).unwrap();
    out.push(pair(
        "backpressure",
        "tower ConcurrencyLimit + LoadShed",
        Driven::new(tower_limit(), plain),
        Driven::new(backpressure.layer(leaf()), plain),
    ));

    let lifo = LifoQueueLayer::builder("ratios_lifo")
        .max_in_flight(LIMIT)
        .ignore_deadlines()
        .build()
        .unwrap();
    out.push(pair(
        "lifo",
        "tower ConcurrencyLimit + LoadShed",
        Driven::new(tower_limit(), plain),
        Driven::new(lifo.layer(leaf()), plain),
    ));

    // A quota no loop reaches, over 1,000 clients, and whole-client shedding at 0, as in a
    // healthy server (a fraction above 0 adds one clock read and one hash: `throttle_shedding`).
    let throttle = |fraction: f64| {
        ThrottleLayer::builder("ratios_throttle", throttle_key as fn(&Req) -> _)
            .shed(
                ShedFraction::builder("ratios_throttle")
                    .initial(fraction)
                    .build()
                    .unwrap(),
            )
            .quotas(
                ClientQuotas::builder("ratios_throttle", Quota::per_second(NonZeroU32::MAX))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    out.push(pair(
        "throttle",
        "tower Timeout",
        Driven::new(tower_timeout(), plain),
        Driven::new(throttle(0.0).layer(leaf()), plain),
    ));
    // Nobody is shed at 1e-9, but every request is hashed for its epoch.
    out.push(pair(
        "throttle_shedding",
        "tower Timeout (not in the summary)",
        Driven::new(tower_timeout(), plain),
        Driven::new(throttle(1e-9).layer(leaf()), plain),
    ));

    let controller = AdmissionController::builder("ratios_pid", signal_fn(|_| Some(0.0)))
        .build()
        .unwrap();
    out.push(pair(
        "pid",
        "tower Timeout",
        Driven::new(tower_timeout(), plain),
        Driven::new(AdmissionLayer::new(controller).layer(leaf()), plain),
    ));
    out
}

// ---- shared primitives on 1 and 2 threads -------------------------------------------------

const BUCKET_ITERS: u64 = 100_000;
const RATE: u32 = 1_000_000_000;
const BURST: u32 = 1_000_000;

/// Both on their default clocks, a quota every check is granted (the grant path).
fn buckets() -> (TokenBucket, governor::DefaultDirectRateLimiter) {
    let ours = TokenBucket::builder("ratios_bucket")
        .capacity(f64::from(BURST))
        .rate(f64::from(RATE))
        .build()
        .unwrap();
    let quota = governor::Quota::per_second(NonZeroU32::new(RATE).unwrap())
        .allow_burst(NonZeroU32::new(BURST).unwrap());
    (ours, governor::RateLimiter::direct(quota))
}

/// Bytes a value built by `f` holds (live bytes after minus before; single-threaded here).
fn held_bytes<T>(f: impl FnOnce() -> T) -> (T, isize) {
    COUNTING.store(true, Relaxed);
    let before = LIVE_BYTES.load(Relaxed);
    let value = f();
    let held = LIVE_BYTES.load(Relaxed) - before;
    COUNTING.store(false, Relaxed);
    (value, held)
}

// ---- the other shared primitives on 2 threads ----------------------------------------------

/// ns per call per thread when `threads` threads each drive their own clone of a service (on
/// their own current-thread runtime) through `n` calls at once: the shared state behind the
/// clones is what the threads contend on.
fn drive_on_threads<S, R>(threads: usize, svc: &S, make: fn(u64) -> R, n: u64) -> f64
where
    S: Service<R> + Clone + Send,
    S::Error: std::fmt::Debug,
    R: Send,
{
    let clones = (0..threads).map(|_| svc.clone()).collect();
    let slowest = on_threads(clones, |mut svc, barrier| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut reqs: Vec<R> = (0..n).map(make).collect();
        barrier.wait();
        rt.block_on(async {
            let start = Instant::now();
            Driven::<S, R>::drain(&mut svc, &mut reqs).await;
            start.elapsed()
        })
    });
    slowest.as_nanos() as f64 / n as f64
}

/// The shared state each of these primitives keeps (a budget, a tracker, a quota table, a
/// queue's gate) on 1 and 2 threads against its baseline, in interleaved rounds: "2t/1t" is how
/// the cost of one call grows when a second thread uses the same state at once.
fn two_thread_rows(rt: &Runtime) {
    let _guard = rt.enter();
    type Row = (
        &'static str,
        &'static str,
        Box<dyn Fn(usize) -> f64>,
        Box<dyn Fn(usize) -> f64>,
    );
    const N: u64 = BUCKET_ITERS / 2;
    let rows: Vec<Row> = vec![
        {
            let ours = RetryBudget::builder("ratios_budget_2t").build().unwrap();
            let base = TpsBudget::default();
            (
                "retry budget",
                "tower TpsBudget",
                Box::new(move |t| {
                    hammer(t, N, || {
                        base.deposit();
                        base.withdraw()
                    })
                }),
                Box::new(move |t| {
                    hammer(t, N, || {
                        backstop::retry::Budget::deposit(&ours);
                        backstop::retry::Budget::try_withdraw(&ours, RetryKind::AfterError)
                    })
                }),
            )
        },
        {
            let ours = LatencyTracker::new();
            let base = std::sync::Mutex::new(
                hdrhistogram::Histogram::<u32>::new_with_bounds(1, 100_000_000, 2).unwrap(),
            );
            (
                "hedge tracker",
                "Mutex<hdrhistogram>",
                Box::new(move |t| {
                    hammer(t, N, || {
                        base.lock().unwrap().saturating_record(black_box(12_345));
                        true
                    })
                }),
                // The hedge's path: the instant its future read to time the copy.
                Box::new(move |t| {
                    let now = tokio::time::Instant::now();
                    hammer(t, N, || {
                        ours.record_at(Duration::from_micros(black_box(12_345)), black_box(now));
                        true
                    })
                }),
            )
        },
        {
            let ours =
                ClientQuotas::builder("ratios_quotas_2t", Quota::per_second(NonZeroU32::MAX))
                    .build()
                    .unwrap();
            let base: governor::DefaultKeyedRateLimiter<u64> =
                governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX));
            let keys: Arc<Vec<ClientId>> = Arc::new((0..1_000u64).map(ClientId::from).collect());
            let next = || {
                thread_local!(static I: Cell<u64> = const { Cell::new(0) });
                I.with(|i| {
                    i.set(i.get() + 1);
                    i.get() % 1_000
                })
            };
            (
                "client quotas",
                "governor keyed",
                Box::new(move |t| hammer(t, N, || base.check_key(&next()).is_ok())),
                Box::new(move |t| hammer(t, N, || ours.check(&keys[next() as usize]).is_ok())),
            )
        },
        {
            let ours = BackpressureLayer::new("ratios_backpressure_2t", LIMIT, 0)
                .unwrap()
                .layer(leaf::<Req>());
            // tower's ConcurrencyLimit shares its semaphore between clones, as the gate is shared.
            let base = tower_limit();
            (
                "backpressure",
                "tower ConcurrencyLimit + LoadShed",
                Box::new(move |t| drive_on_threads(t, &base, plain, N)),
                Box::new(move |t| drive_on_threads(t, &ours, plain, N)),
            )
        },
        {
            let ours = LifoQueueLayer::builder("ratios_lifo_2t")
                .max_in_flight(LIMIT)
                .ignore_deadlines()
                .build()
                .unwrap()
                .layer(leaf::<Req>());
            let base = tower_limit();
            (
                "lifo queue",
                "tower ConcurrencyLimit + LoadShed",
                Box::new(move |t| drive_on_threads(t, &base, plain, N)),
                Box::new(move |t| drive_on_threads(t, &ours, plain, N)),
            )
        },
    ];
    const ROUNDS_2T: usize = 21;
    println!(
        "\nshared state on 1 and 2 threads, ns per call per thread, median of {ROUNDS_2T} interleaved rounds:"
    );
    println!(
        "  {:<14} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}  baseline",
        "primitive", "base 1t", "ours 1t", "base 2t", "ours 2t", "ratio 2t", "ours 2/1"
    );
    for (name, baseline, base, ours) in rows {
        let mut samples = [(); 6].map(|_| Vec::new());
        for round in 0..ROUNDS_2T {
            let (b1, o1, b2, o2) = if round % 2 == 0 {
                (base(1), ours(1), base(2), ours(2))
            } else {
                let (o1, b1, o2) = (ours(1), base(1), ours(2));
                (b1, o1, base(2), o2)
            };
            for (v, x) in samples.iter_mut().zip([b1, o1, b2, o2, o2 / b2, o2 / o1]) {
                v.push(x);
            }
        }
        let [b1, o1, b2, o2, r2, s] = samples.map(median);
        println!(
            "  {name:<14} {b1:>8.1} {o1:>8.1} {b2:>8.1} {o2:>8.1} {r2:>9.2} {s:>9.2}  {baseline}"
        );
    }
}

fn main() {
    // Only in a real bench run: `cargo test --benches` runs this binary without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let began = Instant::now();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder installed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    let (hedge_layer, hedge_bytes) = held_bytes(|| {
        HedgeLayer::builder("ratios_hedge_size")
            .build()
            .unwrap()
            .layer(leaf::<Request<()>>())
    });
    let (tower_hedge, tower_hedge_bytes) = held_bytes(|| {
        tower::hedge::Hedge::new(
            leaf::<Request<()>>(),
            TowerHedgePolicy,
            10,
            0.95,
            Duration::from_secs(10),
        )
    });
    drop((hedge_layer, tower_hedge));

    let mut pairs = pairs(&rt);
    // Warm-up: caches, the recorder's maps, the runtime's timer wheel.
    for p in &mut pairs {
        p.base.time(&rt, ITERS / 10);
        p.ours.time(&rt, ITERS / 10);
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        vec![(Vec::new(), Vec::new(), Vec::new()); pairs.len()];
    for round in 0..ROUNDS {
        for (p, (base, ours, ratio)) in pairs.iter_mut().zip(&mut samples) {
            let (b, o) = if round % 2 == 0 {
                let b = p.base.time(&rt, ITERS);
                (b, p.ours.time(&rt, ITERS))
            } else {
                let o = p.ours.time(&rt, ITERS);
                (p.base.time(&rt, ITERS), o)
            };
            base.push(b);
            ours.push(o);
            ratio.push(o / b);
        }
    }

    println!(
        "\nns per call, median of {ROUNDS} interleaved rounds of {ITERS}, Prometheus recorder installed:"
    );
    println!(
        "  {:<17} {:>9} {:>9} {:>7} {:>11} {:>11}  baseline",
        "layer", "baseline", "backstop", "ratio", "base alloc", "ours alloc"
    );
    let mut ratios = Vec::new();
    let mut extra_allocs = 0.0f64;
    for (p, (base, ours, ratio)) in pairs.iter_mut().zip(samples) {
        let a_base = p.base.allocs(&rt, ALLOC_CALLS);
        let a_ours = p.ours.allocs(&rt, ALLOC_CALLS);
        extra_allocs = extra_allocs.max(a_ours - a_base);
        let r = median(ratio);
        println!(
            "  {:<17} {:>9.1} {:>9.1} {:>7.2} {:>11.2} {:>11.2}  {}",
            p.name,
            median(base),
            median(ours),
            r,
            a_base,
            a_ours,
            p.baseline
        );
        ratios.push((p.name, r));
    }

    // Token bucket against governor, each on its default clock, 1 and 2 threads on one limiter.
    let mut bucket = [
        (Vec::new(), Vec::new(), Vec::new()),
        (Vec::new(), Vec::new(), Vec::new()),
    ];
    // The bucket on the CPU's counter (governor's kind of clock), to tell the clock from the code.
    let mut counter_ratio = [Vec::new(), Vec::new()];
    // The meter's start + finish, 1 and 2 threads on one meter.
    let (mut meter_1t, mut meter_2t, mut clock) = (Vec::new(), Vec::new(), Vec::new());
    // The machine's own 2-thread scaling, on work that shares nothing: a clock read.
    let mut clock_2t = Vec::new();
    let meter = LittleMeter::builder("ratios_meter").build().unwrap();
    let meter_op = || {
        meter.start().finish(Outcome::Success);
        true
    };
    for round in 0..ROUNDS {
        for (t, (gov, ours, ratio)) in bucket.iter_mut().enumerate() {
            let threads = t + 1;
            let (b, g) = buckets();
            let (o, gv) = if round % 2 == 0 {
                let gv = hammer(threads, BUCKET_ITERS, || g.check().is_ok());
                (hammer(threads, BUCKET_ITERS, || b.try_acquire(1)), gv)
            } else {
                let o = hammer(threads, BUCKET_ITERS, || b.try_acquire(1));
                (o, hammer(threads, BUCKET_ITERS, || g.check().is_ok()))
            };
            gov.push(gv);
            ours.push(o);
            ratio.push(o / gv);
            let c = TokenBucket::builder("ratios_bucket_counter")
                .capacity(f64::from(BURST))
                .rate(f64::from(RATE))
                .clock(Clock::cpu_counter())
                .build()
                .unwrap();
            counter_ratio[t].push(hammer(threads, BUCKET_ITERS, || c.try_acquire(1)) / gv);
        }
        let one = hammer(1, BUCKET_ITERS / 5, meter_op);
        let two = hammer(2, BUCKET_ITERS / 5, meter_op);
        meter_1t.push(one);
        meter_2t.push(two);
        let read = || {
            black_box(tokio::time::Instant::now());
            true
        };
        let c1 = hammer(1, BUCKET_ITERS / 5, read);
        clock.push(c1);
        clock_2t.push(hammer(2, BUCKET_ITERS / 5, read) / c1);
    }
    println!("\nns per check, token bucket and governor on their default clocks:");
    let mut bucket_ratio = [0.0; 2];
    let mut governor_ns = [0.0; 2];
    for ((t, (gov, ours, ratio)), counter) in bucket.into_iter().enumerate().zip(counter_ratio) {
        bucket_ratio[t] = median(ratio);
        governor_ns[t] = median(gov);
        println!(
            "  {} thread(s): governor {:.1}, backstop {:.1}, ratio {:.2} (backstop on the CPU counter: {:.2})",
            t + 1,
            governor_ns[t],
            median(ours),
            bucket_ratio[t],
            median(counter)
        );
    }
    let (m1, m2) = (median(meter_1t), median(meter_2t));
    println!(
        "\none read of tokio's clock (what every layer but the bucket on its counter reads): {:.1} ns",
        median(clock)
    );
    println!(
        "\nLittleMeter start + finish: {m1:.1} ns on 1 thread, {m2:.1} ns on 2 threads ({:.2}x; a clock read on 2 threads ÷ 1, which shares nothing, the machine's own scaling: {:.2}x; governor's 2t ÷ 1t: {:.2}x)",
        m2 / m1,
        median(clock_2t),
        governor_ns[1] / governor_ns[0]
    );
    // The hedge tracker's record against a mutex-guarded histogram (same bounds and precision),
    // with and without the clock read tower's rotating histogram makes at each record.
    let tracker = LatencyTracker::new();
    let guarded = std::sync::Mutex::new(
        hdrhistogram::Histogram::<u32>::new_with_bounds(1, 100_000_000, 2).unwrap(),
    );
    let (mut rec_ours, mut rec_mutex, mut rec_mutex_clock) = (Vec::new(), Vec::new(), Vec::new());
    let mut rec_at = Vec::new();
    for _ in 0..ROUNDS {
        rec_ours.push(hammer(1, BUCKET_ITERS / 5, || {
            tracker.record(Duration::from_micros(black_box(12_345)));
            true
        }));
        // What the hedge's future calls: it passes the instant it read to time the copy.
        let now = tokio::time::Instant::now();
        rec_at.push(hammer(1, BUCKET_ITERS / 5, || {
            tracker.record_at(Duration::from_micros(black_box(12_345)), black_box(now));
            true
        }));
        rec_mutex.push(hammer(1, BUCKET_ITERS / 5, || {
            guarded.lock().unwrap().saturating_record(black_box(12_345));
            true
        }));
        rec_mutex_clock.push(hammer(1, BUCKET_ITERS / 5, || {
            black_box(tokio::time::Instant::now());
            guarded.lock().unwrap().saturating_record(black_box(12_345));
            true
        }));
    }
    println!(
        "\nLatencyTracker::record_at (the hedge's path: the caller's instant) {:.1} ns, record (reads the clock) {:.1} ns; a mutex-guarded histogram's record {:.1} ns, {:.1} ns with a clock read (tower's rotating histogram reads one)",
        median(rec_at),
        median(rec_ours),
        median(rec_mutex),
        median(rec_mutex_clock)
    );
    two_thread_rows(&rt);
    println!(
        "\nmemory: one HedgeLayer service {:.1} KB, tower's Hedge {:.1} KB",
        hedge_bytes as f64 / 1024.0,
        tower_hedge_bytes as f64 / 1024.0
    );
    // Proof the recorder saw the series (a missing recorder would make every update free).
    let rendered = prometheus.render();
    let series = rendered
        .lines()
        .filter(|l| l.starts_with("backstop_"))
        .count();
    println!(
        "recorder: {series} backstop series rendered; run took {:.0} s",
        began.elapsed().as_secs_f64()
    );

    let mut line = String::from("summary:");
    let in_summary = |name: &str| !name.contains("shedding") && !name.contains("server");
    for (name, r) in ratios.iter().filter(|(name, _)| in_summary(name)) {
        line += &format!(" {name}={r:.2}");
    }
    line += &format!(
        " bucket_1t={:.2} bucket_2t={:.2} meter_2t={:.2} extra_allocs={} hedge_kb={}",
        bucket_ratio[0],
        bucket_ratio[1],
        m2 / m1,
        extra_allocs.round().max(0.0) as u64,
        (hedge_bytes as f64 / 1024.0).round() as u64
    );
    println!("{line}");
}
