//! The simulated server: `c` workers behind an unbounded FIFO queue, and the network between
//! hops.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::client::{CallPolicy, Caller};
use super::request::{SimRequest, SimResponse, SimService};
use super::service_time::ServiceTime;
use crate::error::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server of fixed capacity: `capacity` workers, an unbounded FIFO queue in front of them (a
/// tokio `Semaphore`, which is fair), and a [`ServiceTime`] per request. A middle hop of a
/// layered topology also calls the next hop, holding its worker while it waits (as a
/// thread-per-request server does).
///
/// It is a `tower::Service<SimRequest>` and a cheap `Clone` handle: clones share the workers,
/// the queue and the counters. Dropping a call's future (for example when a `TimeoutLayer` in
/// the server stack fires) takes the request out of the queue, or stops its work; the work done
/// so far is counted as wasted.
#[derive(Clone)]
pub struct SimServer {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("hop", &self.inner.hop)
            .field("capacity", &self.inner.capacity)
            .field("service_time", &self.inner.service_time)
            .finish()
    }
}

struct ServerInner {
    hop: usize,
    capacity: usize,
    service_time: ServiceTime,
    workers: Arc<Semaphore>,
    rng: Mutex<StdRng>,
    stats: Arc<Mutex<HopCounters>>,
    downstream: Option<Downstream>,
}

/// How a middle hop calls the next one.
pub(crate) struct Downstream {
    pub(crate) service: Mutex<SimService>,
    pub(crate) policy: CallPolicy,
    pub(crate) calls: u32,
    pub(crate) ids: Arc<AtomicU64>,
}

/// Everything a hop counts, by time bucket and in total.
#[derive(Debug, Clone)]
pub(crate) struct HopCounters {
    pub(crate) start: Instant,
    pub(crate) bucket: Duration,
    /// Requests sent to the hop over the network (before its stack).
    pub(crate) sent: u64,
    pub(crate) arrivals: u64,
    pub(crate) completed: u64,
    pub(crate) cancelled: u64,
    pub(crate) failed: u64,
    pub(crate) work_us: u64,
    pub(crate) wasted_us: u64,
    pub(crate) in_flight: u64,
    pub(crate) area_us: u128,
    pub(crate) last_event: Instant,
    pub(crate) latency_us: u64,
    pub(crate) buckets: Vec<HopBucket>,
}

/// A hop's counts in one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HopBucket {
    pub(crate) sent: u64,
    pub(crate) arrivals: u64,
    pub(crate) work_us: u64,
    pub(crate) wasted_us: u64,
}

impl HopCounters {
    pub(crate) fn new(start: Instant, bucket: Duration) -> Self {
        HopCounters {
            start,
            bucket,
            sent: 0,
            arrivals: 0,
            completed: 0,
            cancelled: 0,
            failed: 0,
            work_us: 0,
            wasted_us: 0,
            in_flight: 0,
            area_us: 0,
            last_event: start,
            latency_us: 0,
            buckets: Vec::new(),
        }
    }

    pub(crate) fn bucket_mut(&mut self, now: Instant) -> &mut HopBucket {
        let i = (now.saturating_duration_since(self.start).as_micros()
            / self.bucket.as_micros().max(1)) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, HopBucket::default());
        }
        &mut self.buckets[i]
    }

    /// Brings the area under the in-flight curve up to `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_event).as_micros();
        self.area_us += dt * self.in_flight as u128;
        self.last_event = self.last_event.max(now);
    }
}

impl SimServer {
    pub(crate) fn new(
        hop: usize,
        capacity: usize,
        service_time: ServiceTime,
        seed: u64,
        stats: Arc<Mutex<HopCounters>>,
        downstream: Option<Downstream>,
    ) -> Self {
        SimServer {
            inner: Arc::new(ServerInner {
                hop,
                capacity,
                service_time,
                workers: Arc::new(Semaphore::new(capacity)),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                stats,
                downstream,
            }),
        }
    }

    /// The hop this server is (0 for the front).
    pub fn hop(&self) -> usize {
        self.inner.hop
    }

    /// Its number of workers.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Its service-time distribution.
    pub fn service_time(&self) -> &ServiceTime {
        &self.inner.service_time
    }

    /// Requests waiting for a worker or being served now.
    pub fn in_flight(&self) -> u64 {
        lock(&self.inner.stats).in_flight
    }

    /// Erases the server to a [`SimService`], for stacks that need no layers.
    pub fn boxed(self) -> SimService {
        SimService::new(self)
    }
}

impl Service<SimRequest> for SimServer {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<SimResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The queue is unbounded: the naive baseline never says no.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let inner = self.inner.clone();
        let visit = Visit::arrive(inner.stats.clone());
        Box::pin(inner.handle(req, visit))
    }
}

impl ServerInner {
    async fn handle(
        self: Arc<Self>,
        req: SimRequest,
        mut visit: Visit,
    ) -> Result<SimResponse, BoxError> {
        let arrived = Instant::now();
        let _permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BoxError::from("simulated server closed"))?;
        let started = Instant::now();
        let service = self.service_time.sample(&mut *lock(&self.rng));
        visit.working_since = Some((started, service));
        tokio::time::sleep(service).await;
        visit.working_since = None;
        visit.own_work = service;

        if let Some(down) = &self.downstream {
            let mut svc = lock(&down.service).clone();
            let mut caller = Caller::for_hop(&req, self.hop + 1, down.ids.clone(), &self.rng);
            for _ in 0..down.calls {
                if let Err(e) = caller.call(&mut svc, &down.policy).await {
                    visit.finish(Ending::Failed, req.is_abandoned());
                    return Err(e);
                }
            }
        }
        visit.finish(Ending::Completed, req.is_abandoned());
        Ok(SimResponse {
            id: req.id,
            hop: self.hop,
            queued: started - arrived,
            service,
        })
    }
}

enum Ending {
    Completed,
    Failed,
}

/// One request's stay at a server; dropping it unfinished counts a cancellation.
struct Visit {
    stats: Arc<Mutex<HopCounters>>,
    arrived: Instant,
    working_since: Option<(Instant, Duration)>,
    own_work: Duration,
    done: bool,
}

impl Visit {
    fn arrive(stats: Arc<Mutex<HopCounters>>) -> Self {
        let now = Instant::now();
        {
            let mut s = lock(&stats);
            s.advance(now);
            s.in_flight += 1;
            s.arrivals += 1;
            s.bucket_mut(now).arrivals += 1;
        }
        Visit {
            stats,
            arrived: now,
            working_since: None,
            own_work: Duration::ZERO,
            done: false,
        }
    }

    fn finish(&mut self, ending: Ending, abandoned: bool) {
        self.done = true;
        let now = Instant::now();
        let work = self.own_work.as_micros() as u64;
        let mut s = lock(&self.stats);
        s.advance(now);
        s.in_flight -= 1;
        s.latency_us += (now - self.arrived).as_micros() as u64;
        match ending {
            Ending::Completed => s.completed += 1,
            Ending::Failed => s.failed += 1,
        }
        s.work_us += work;
        let b = s.bucket_mut(now);
        b.work_us += work;
        if abandoned || matches!(ending, Ending::Failed) {
            b.wasted_us += work;
            s.wasted_us += work;
        }
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        // Work cut short, or finished for a caller who then cancelled the rest: all wasted.
        let partial = match self.working_since {
            Some((since, planned)) => (now - since).min(planned),
            None => self.own_work,
        };
        let work = partial.as_micros() as u64;
        let mut s = lock(&self.stats);
        s.advance(now);
        s.in_flight -= 1;
        s.latency_us += (now - self.arrived).as_micros() as u64;
        s.cancelled += 1;
        s.work_us += work;
        s.wasted_us += work;
        let b = s.bucket_mut(now);
        b.work_us += work;
        b.wasted_us += work;
    }
}

/// The network in front of a hop: the hop's stack runs in its own task, so a caller that stops
/// waiting does not stop the server (as with a real connection), and arrivals are counted here,
/// before any server layer can refuse them.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) stack: SimService,
    pub(crate) stats: Arc<Mutex<HopCounters>>,
}

impl Service<SimRequest> for Network {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<SimResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        {
            let now = Instant::now();
            let mut s = lock(&self.stats);
            s.sent += 1;
            s.bucket_mut(now).sent += 1;
        }
        let stack = self.stack.clone();
        let task = tokio::spawn(stack.oneshot(req));
        Box::pin(async move {
            task.await
                .map_err(|e| BoxError::from(format!("simulated server task failed: {e}")))?
        })
    }
}
