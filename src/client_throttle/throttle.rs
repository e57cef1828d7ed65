use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::time::Instant;

use crate::error::{ConfigError, check};
use crate::metrics::names;

/// How many slots the window is cut into: the counts age out one slot (a twelfth of the
/// window, 10 s of the SRE book's 2 minutes) at a time, not all at once.
const SLOTS: u64 = 12;

/// The shared state of a [`ClientThrottleLayer`](super::ClientThrottleLayer): the client's
/// `requests` and `accepts` over a sliding window, and the local refusal drawn from them.
///
/// A request is refused locally with probability
/// `max(0, (requests − K·accepts) / (requests + 1))` (the SRE book's adaptive throttling).
/// Local refusals count as requests: that is what makes the server see about K times what it
/// accepts however hard the client pushes.
///
/// A cheap [`Clone`] handle: every service of one client shares one window. Lock-free: the
/// window is a ring of slots of atomic counters.
#[derive(Clone)]
pub struct ClientThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    k: f64,
    window: Duration,
    slot_us: u64,
    epoch: Instant,
    slots: [Slot; SLOTS as usize],
    rng: AtomicU64,
    refused: Counter,
    probability: Gauge,
}

#[derive(Default)]
struct Slot {
    /// Which slot number (time since the epoch ÷ slot width) the counts belong to.
    stamp: AtomicU64,
    requests: AtomicU64,
    accepts: AtomicU64,
}

impl fmt::Debug for ClientThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (requests, accepts) = self.counts();
        f.debug_struct("ClientThrottle")
            .field("name", &self.inner.name)
            .field("k", &self.inner.k)
            .field("window", &self.inner.window)
            .field("requests", &requests)
            .field("accepts", &accepts)
            .finish_non_exhaustive()
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ClientThrottle {
    /// Starts a builder; the series carry `name`.
    pub fn builder(name: impl Into<String>) -> ClientThrottleBuilder {
        ClientThrottleBuilder {
            name: name.into(),
            k: 2.0,
            window: Duration::from_secs(120),
            seed: None,
        }
    }

    /// A throttle with the SRE book's values: K = 2 over 2 minutes.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name)
            .build()
            .expect("the default values are valid")
    }

    /// The multiplier K.
    pub fn k(&self) -> f64 {
        self.inner.k
    }

    /// The window the counts cover.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// `(requests, accepts)` over the window now.
    pub fn counts(&self) -> (u64, u64) {
        self.counts_at(self.slot_now())
    }

    /// The probability that a request is refused locally now.
    pub fn refusal_probability(&self) -> f64 {
        let (requests, accepts) = self.counts();
        self.probability_of(requests, accepts)
    }

    fn probability_of(&self, requests: u64, accepts: u64) -> f64 {
        let requests = requests as f64;
        ((requests - self.inner.k * accepts as f64) / (requests + 1.0)).max(0.0)
    }

    fn slot_now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.inner.epoch)
            .as_micros() as u64
            / self.inner.slot_us
    }

    fn counts_at(&self, now: u64) -> (u64, u64) {
        let oldest = now.saturating_sub(SLOTS - 1);
        self.inner
            .slots
            .iter()
            .filter(|s| (oldest..=now).contains(&s.stamp.load(Relaxed)))
            .fold((0, 0), |(r, a), s| {
                (r + s.requests.load(Relaxed), a + s.accepts.load(Relaxed))
            })
    }

    /// The slot for `now`, emptied first if it still holds counts from a window ago. Two
    /// threads may both find it stale; the loser's count of that instant can be lost, a
    /// request in thousands, which the formula does not notice.
    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.inner.slots[(now % SLOTS) as usize];
        let stamp = slot.stamp.load(Relaxed);
        if stamp != now
            && slot
                .stamp
                .compare_exchange(stamp, now, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.accepts.store(0, Relaxed);
        }
        slot
    }

    /// Decides one request: counts it, and draws whether to send it. Returns `false` to refuse
    /// it locally.
    pub fn try_send(&self) -> bool {
        let now = self.slot_now();
        let (requests, accepts) = self.counts_at(now);
        self.slot(now).requests.fetch_add(1, Relaxed);
        let p = self.probability_of(requests, accepts);
        self.inner.probability.set(p);
        if p <= 0.0 {
            return true;
        }
        let draw = splitmix(
            self.inner
                .rng
                .fetch_add(GOLDEN, Relaxed)
                .wrapping_add(GOLDEN),
        );
        let send = ((draw >> 11) as f64 / (1u64 << 53) as f64) >= p;
        if !send {
            self.inner.refused.increment(1);
        }
        send
    }

    /// Counts a request the server accepted: anything but an overload answer.
    pub fn accepted(&self) {
        self.slot(self.slot_now()).accepts.fetch_add(1, Relaxed);
    }
}

/// Builds a [`ClientThrottle`]; [`build`](Self::build) checks every value.
#[derive(Debug)]
#[must_use]
pub struct ClientThrottleBuilder {
    name: String,
    k: f64,
    window: Duration,
    seed: Option<u64>,
}

impl ClientThrottleBuilder {
    /// The multiplier K: the server sees about K times what it accepts. Lower is stricter (at
    /// 1 a server refusing a request costs the client one local refusal, and a blip of
    /// refusals throttles at once); higher lets more through to find out when the server
    /// recovers. In `[1, 100]`. Default 2, the SRE book's.
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// The window `requests` and `accepts` are counted over, in twelve slots that age out one
    /// at a time. Longer reacts more slowly to a recovered server; shorter is noisier at low
    /// rates. At least 12 ms, at most 1 hour. Default 2 minutes, the SRE book's.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Seeds the local draws, so a simulation is repeatable. Default: a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the values, registers the series (zero refusals) and builds the throttle.
    pub fn build(self) -> Result<ClientThrottle, ConfigError> {
        let k = check("k", self.k, |k| (1.0..=100.0).contains(k), "in [1, 100]")?;
        let window = check(
            "window",
            self.window,
            |w| *w >= Duration::from_millis(SLOTS) && *w <= Duration::from_secs(3600),
            "at least 12 ms, at most 1 hour",
        )?;
        names::describe_client_throttle();
        let label = names::NAME_LABEL;
        let refused = counter!(names::CLIENT_THROTTLE_REFUSED, label => self.name.clone());
        refused.increment(0);
        let probability = gauge!(names::CLIENT_THROTTLE_PROBABILITY, label => self.name.clone());
        probability.set(0.0);
        Ok(ClientThrottle {
            inner: Arc::new(Inner {
                name: self.name,
                k,
                window,
                slot_us: (window.as_micros() as u64 / SLOTS).max(1),
                epoch: Instant::now(),
                // Stamp 0 is the first slot's own number, so the ring starts stale except there.
                slots: Default::default(),
                rng: AtomicU64::new(self.seed.unwrap_or_else(rand::random)),
                refused,
                probability,
            }),
        })
    }
}
