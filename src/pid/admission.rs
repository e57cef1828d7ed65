use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::watch;
use tokio::time::Instant;

use super::controller::{Action, AntiWindup, MAX_TIME_CONSTANT, PidController, PidTerms};
use super::signal::Signal;
use crate::context::Criticality;
use crate::error::{ConfigError, check};
use crate::metrics::names;

/// The shared state of an [`AdmissionLayer`](super::AdmissionLayer): a [`Signal`], a
/// [`PidController`] steering it to a setpoint, and the admission probability that results.
///
/// The controller's output is the share of requests to shed, `u` in `[0, 1 − min_admission]`;
/// the admission probability is `1 − u`. The controller acts directly: when the measurement is
/// above the setpoint it sheds more.
///
/// Ticks are lazy: the first request after a tick has passed takes the controller's lock with
/// `try_lock` (a request that finds it taken does not wait), samples the signal and updates the
/// output. Nothing runs in the background, so an idle service costs nothing. When no request
/// passes through an [`AdmissionLayer`](super::AdmissionLayer), because the output drives
/// something else (a whole-client throttle's shed fraction, through
/// [`subscribe`](Self::subscribe)), spawn [`run_ticker`](Self::run_ticker) instead.
///
/// A cheap [`Clone`] handle: clones share one controller.
#[derive(Clone)]
pub struct AdmissionController {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    tick: Duration,
    epoch: Instant,
    signal: Box<dyn Signal>,
    state: Mutex<TickState>,
    /// Microseconds after `epoch` when the next tick is due.
    next_tick_us: AtomicU64,
    /// The admission probability, as f64 bits, read lock-free on the request path.
    probability: AtomicU64,
    /// A splitmix64 counter: one lock-free, seedable random draw per request; with
    /// [`Draw::Even`], the admission credit (f64 bits) instead.
    rng: AtomicU64,
    draw: Draw,
    /// Requests are admitted without a draw while the signal's instant reading is below this.
    floor: f64,
    /// How fast the integral follows the share the floor really let in (zero: not at all).
    floor_tracking: Duration,
    /// The share of the integral let go at the first idle tick of a streak (doubling at each
    /// further one); zero: off.
    idle_release: f64,
    /// The plateau between two criticality levels (see [`split_shed`]).
    level_margin: f64,
    /// Ticks at which the integral was let go because the signal was idle.
    idle_releases: AtomicU64,
    admitted: AtomicU64,
    /// Of `admitted`, the ones the floor let in after the draw said no.
    floor_admitted: AtomicU64,
    denied: AtomicU64,
    /// Requests that arrived at each criticality level (lowest first), counted at the draw.
    arrivals: [AtomicU64; LEVELS],
    /// The admission probability of each level (f64 bits): the shed fills the lowest level
    /// before it touches the next.
    level_probability: [AtomicU64; LEVELS],
    /// The error-diffusion credit of each level, for [`Draw::Even`].
    level_credit: [AtomicU64; LEVELS],
    /// The lowest level the floor may let in: the floor never admits a level the controller
    /// refuses whole. Without this rule it let sheddable requests in whenever the queue ran
    /// short, the controller answered by shedding more, and the excess fell on the critical
    /// ones.
    floor_from: AtomicUsize,
    shed_tx: watch::Sender<f64>,
    on_shed: Option<ShedCallback>,
    series: Series,
}

type ShedCallback = Box<dyn Fn(f64) + Send + Sync>;

struct TickState {
    pid: PidController,
    last_tick: Option<Instant>,
    /// Requests decided and requests the floor let in, at the last tick.
    last_counts: (u64, u64),
    /// Consecutive ticks after which the signal reported itself idle.
    idle_ticks: u32,
    /// Arrivals per level at the last tick.
    last_arrivals: [u64; LEVELS],
    /// Each level's share of the arrivals, smoothed over ticks; `None` until requests came.
    shares: Option<[f64; LEVELS]>,
    /// The shed fraction through a slow low-pass filter: what reaches the levels above the
    /// lowest one being shed (see [`SPILL_FILTER`]).
    slow_shed: f64,
}

/// The time constant of the filter on the shed that reaches the levels above the lowest one
/// with traffic: the lowest level follows every tick's shed, the next ones only a shed that
/// lasts. Under random arrivals the controller's output swings by a tenth for a tick or two;
/// a shed that really needs the next level lasts, and reaches it within a few time constants.
const SPILL_FILTER: Duration = Duration::from_secs(2);

const LEVELS: usize = Criticality::ALL.len();

/// How much of a tick's arrival mix enters the smoothed shares: a time constant of about ten
/// ticks (1 s at the default tick), so one tick's random mix does not move the split. The
/// split's error matters little anyway: the integral corrects the total shed to what the
/// signal needs, and the lowest level's refusal share then settles at the needed share ÷
/// its true share, whatever the estimate.
const SHARE_SMOOTHING: f64 = 0.1;

/// The admission probability of each level when the controller sheds `shed` of all requests
/// and the levels make up `shares` of them (lowest first): the lowest level is refused up to
/// all of it before the next one loses anything, and the next starts to lose only once the
/// shed passes the levels below it by `margin` (a plateau in the actuator: the controller's
/// output swings by a few hundredths from tick to tick, and without it a shed that needs
/// nearly all of the lowest level spilled those swings onto the next). A level with no recent
/// arrivals is refused whole when it sits below a level still being shed, and not at all
/// above.
pub(crate) fn split_shed(shed: f64, shares: &[f64; LEVELS], margin: f64) -> [f64; LEVELS] {
    let mut left = shed;
    let mut probability = [1.0; LEVELS];
    for (p, &share) in probability.iter_mut().zip(shares) {
        let refused = if share > 0.0 {
            (left / share).min(1.0)
        } else if left > 1e-12 {
            1.0
        } else {
            0.0
        };
        if share > 0.0 {
            left = (left - share - margin).max(0.0);
        }
        *p = (1.0 - refused).clamp(0.0, 1.0);
    }
    probability
}

struct Series {
    probability: Gauge,
    error: Gauge,
    p: Gauge,
    i: Gauge,
    d: Gauge,
    denied: Counter,
    /// Refusals by criticality level: the labelled counter and the count for the accessor.
    denied_by_level: [(Counter, AtomicU64); LEVELS],
}

impl Series {
    fn register(name: &str) -> Self {
        names::describe_admission();
        let label = names::NAME_LABEL;
        let series = Series {
            probability: gauge!(names::ADMISSION_PROBABILITY, label => name.to_owned()),
            error: gauge!(names::ADMISSION_ERROR, label => name.to_owned()),
            p: gauge!(names::ADMISSION_P_TERM, label => name.to_owned()),
            i: gauge!(names::ADMISSION_I_TERM, label => name.to_owned()),
            d: gauge!(names::ADMISSION_D_TERM, label => name.to_owned()),
            denied: counter!(names::ADMISSION_DENIED, label => name.to_owned()),
            denied_by_level: Criticality::ALL.map(|level| {
                let counter = counter!(
                    names::ADMISSION_DENIED_BY_CRITICALITY,
                    label => name.to_owned(),
                    names::CRITICALITY_LABEL => level.as_str(),
                );
                counter.increment(0);
                (counter, AtomicU64::new(0))
            }),
        };
        series.probability.set(1.0);
        series.error.set(0.0);
        series.p.set(0.0);
        series.i.set(0.0);
        series.d.set(0.0);
        series.denied.increment(0);
        series
    }
}

impl fmt::Debug for AdmissionController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionController")
            .field("name", &self.inner.name)
            .field("tick", &self.inner.tick)
            .field("admission_probability", &self.admission_probability())
            .finish_non_exhaustive()
    }
}

/// How a request is chosen for admission, given the probability `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Draw {
    /// An independent random draw per request (seeded with
    /// [`seed`](AdmissionControllerBuilder::seed)): the admitted stream is as bursty as the
    /// offered one.
    #[default]
    Random,
    /// Error diffusion: exactly a share `p` of requests is admitted, evenly spread (with `p` =
    /// 1/3, every third). The admitted stream is smoother than the offered one, so the same
    /// utilization costs less queueing. Deterministic, no seed.
    Even,
}

/// The default [`error_limit`](AdmissionControllerBuilder::error_limit), in setpoints: above
/// what a short line lets the signal reach (so the recommended configuration never meets it),
/// far below the 15–25 setpoints a long queue reaches within one tick of a 3× surge.
const DEFAULT_ERROR_LIMIT: f64 = 3.0;

/// The default [`idle_release`](AdmissionControllerBuilder::idle_release): a quarter of the
/// integral at the first idle tick, then half, then all of it.
const DEFAULT_IDLE_RELEASE: f64 = 0.25;

/// The default [`level_margin`](AdmissionControllerBuilder::level_margin).
const DEFAULT_LEVEL_MARGIN: f64 = 0.1;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl AdmissionController {
    /// Starts a builder for a controller that samples `signal`; its series carry `name`.
    pub fn builder(name: impl Into<String>, signal: impl Signal) -> AdmissionControllerBuilder {
        AdmissionControllerBuilder {
            signal: Box::new(signal),
            name: name.into(),
            tick: Duration::from_millis(100),
            setpoint: 0.05,
            gains: (2.0, 20.0, 0.2),
            min_admission: 0.05,
            anti_windup: AntiWindup::Clamp,
            derivative_filter: Duration::from_millis(200),
            measurement_filter: Duration::ZERO,
            adaptive_filter: 0.0,
            dead_band: 0.0,
            error_limit: None,
            seed: None,
            draw: Draw::Random,
            floor: None,
            floor_tracking: Duration::from_secs(4),
            idle_release: DEFAULT_IDLE_RELEASE,
            level_margin: DEFAULT_LEVEL_MARGIN,
            on_shed: None,
        }
    }

    /// The name the controller's series carry.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How often the controller samples its signal.
    pub fn tick(&self) -> Duration {
        self.inner.tick
    }

    /// The probability that a request is admitted now, in `[min_admission, 1]`.
    pub fn admission_probability(&self) -> f64 {
        f64::from_bits(self.inner.probability.load(Relaxed))
    }

    /// The share of requests to shed now: `1 − admission_probability`. The figure to hand to a
    /// whole-client throttle.
    pub fn shed_fraction(&self) -> f64 {
        1.0 - self.admission_probability()
    }

    /// A [`watch`] of the shed fraction, updated at every tick that changes it. The preferred
    /// way to drive a whole-client throttle: it sheds that share of the client's work at the
    /// source, instead of this layer refusing random requests after they were made.
    pub fn subscribe(&self) -> watch::Receiver<f64> {
        self.inner.shed_tx.subscribe()
    }

    /// How many ticks so far let go of part of the shed because the signal reported itself idle
    /// (see [`idle_release`](AdmissionControllerBuilder::idle_release)): under a steady
    /// overload it stays still; it counts after a surge, while the shed falls.
    pub fn idle_releases(&self) -> u64 {
        self.inner.idle_releases.load(Relaxed)
    }

    /// The controller's terms at the last tick.
    pub fn terms(&self) -> PidTerms {
        self.lock().pid.terms()
    }

    /// Requests admitted so far.
    pub fn admitted(&self) -> u64 {
        self.inner.admitted.load(Relaxed)
    }

    /// Requests refused so far.
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Relaxed)
    }

    /// Of the requests admitted so far, those the draw would have refused but the
    /// [`floor`](AdmissionControllerBuilder::floor) let in.
    pub fn floor_admitted(&self) -> u64 {
        self.inner.floor_admitted.load(Relaxed)
    }

    /// Decides one request at the default level ([`Criticality::Critical`]): runs a tick first
    /// if one is due, then admits with the current probability. Lock-free unless a tick is due.
    /// When every request goes through here, this is the plain shed fraction.
    pub fn try_admit(&self) -> bool {
        self.try_admit_at(Criticality::default())
    }

    /// The probability that a request at `level` is admitted now: the shed fraction fills the
    /// lowest levels first, in proportion to their recent share of arrivals.
    pub fn level_probability(&self, level: Criticality) -> f64 {
        f64::from_bits(self.inner.level_probability[level.index()].load(Relaxed))
    }

    /// Requests refused so far at `level`.
    pub fn denied_at(&self, level: Criticality) -> u64 {
        self.inner.series.denied_by_level[level.index()]
            .1
            .load(Relaxed)
    }

    /// Decides one request of criticality `level`: runs a tick first if one is due, then
    /// admits with that level's probability ([`level_probability`](Self::level_probability)).
    /// Lock-free unless a tick is due.
    pub fn try_admit_at(&self, level: Criticality) -> bool {
        self.poll_tick(Instant::now());
        let i = level.index();
        self.inner.arrivals[i].fetch_add(1, Relaxed);
        let p = f64::from_bits(self.inner.level_probability[i].load(Relaxed));
        let admit = p >= 1.0
            || match self.inner.draw {
                Draw::Random => {
                    let draw = splitmix(
                        self.inner
                            .rng
                            .fetch_add(GOLDEN, Relaxed)
                            .wrapping_add(GOLDEN),
                    );
                    ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
                }
                Draw::Even => {
                    // Error diffusion: each request adds p to a credit, and one whole credit
                    // admits one request. Exactly p of them pass, evenly spread.
                    let mut admit = false;
                    let _ = self.inner.level_credit[i].fetch_update(Relaxed, Relaxed, |bits| {
                        let credit = f64::from_bits(bits) + p;
                        admit = credit >= 1.0;
                        Some(if admit { credit - 1.0 } else { credit }.to_bits())
                    });
                    admit
                }
            };
        // Work conservation: a request that would wait less than the floor is let in whatever
        // the draw said, so the controller never leaves a worker idle that the queue would
        // have kept busy. Read only when the draw refuses: at full admission it costs nothing.
        let admit = admit
            || i >= self.inner.floor_from.load(Relaxed) && {
                let floored = self
                    .inner
                    .signal
                    .instant()
                    .is_some_and(|now| now < self.inner.floor);
                if floored {
                    self.inner.floor_admitted.fetch_add(1, Relaxed);
                }
                floored
            };
        if admit {
            self.inner.admitted.fetch_add(1, Relaxed);
        } else {
            self.inner.denied.fetch_add(1, Relaxed);
            self.inner.series.denied.increment(1);
            let (counter, count) = &self.inner.series.denied_by_level[i];
            count.fetch_add(1, Relaxed);
            counter.increment(1);
        }
        admit
    }

    /// Runs a tick if one is due at `now` and nobody else is running it; returns whether this
    /// call ran it.
    pub fn poll_tick(&self, now: Instant) -> bool {
        let inner = &self.inner;
        let now_us = now.saturating_duration_since(inner.epoch).as_micros() as u64;
        if now_us < inner.next_tick_us.load(Relaxed) {
            return false;
        }
        let mut state = match inner.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        // Another request may have run the tick between the check and the lock.
        if now_us < inner.next_tick_us.load(Relaxed) {
            return false;
        }
        inner
            .next_tick_us
            .store(now_us + inner.tick.as_micros() as u64, Relaxed);
        self.tick_locked(&mut state, now);
        true
    }

    /// Ticks every `tick` for as long as the returned future runs. Spawn it when the output
    /// drives something that no request through an [`AdmissionLayer`](super::AdmissionLayer)
    /// would tick (see [`subscribe`](Self::subscribe)).
    pub async fn run_ticker(self) {
        let mut interval = tokio::time::interval(self.inner.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = interval.tick().await;
            self.poll_tick(now);
        }
    }

    fn lock(&self) -> MutexGuard<'_, TickState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick_locked(&self, state: &mut TickState, now: Instant) {
        let inner = &self.inner;
        let sample = inner.signal.sample(now);
        let idle = sample.is_some() && inner.signal.idle() == Some(true);
        state.idle_ticks = if idle {
            state.idle_ticks.saturating_add(1)
        } else {
            0
        };
        // A quiet spell with no requests (lazy ticks) counts as at most two ticks, so that one
        // sample after a long gap does not weigh like all the time it missed.
        let dt = state
            .last_tick
            .map(|t| now.saturating_duration_since(t).min(inner.tick * 2));
        state.last_tick = Some(now);
        // What the floor overrode since the last tick: the share really shed was the output
        // less the share the floor let in. The integral tracks it, so that a controller
        // shedding more than needed (the floor kept filling the queue it emptied) learns the
        // level the server needed instead of resting there.
        let counts = (
            inner.admitted.load(Relaxed) + inner.denied.load(Relaxed),
            inner.floor_admitted.load(Relaxed),
        );
        let (decided, floored) = (
            counts.0 - state.last_counts.0,
            counts.1 - state.last_counts.1,
        );
        state.last_counts = counts;
        let arrivals: [u64; LEVELS] = std::array::from_fn(|i| inner.arrivals[i].load(Relaxed));
        let tick_arrivals: [u64; LEVELS] =
            std::array::from_fn(|i| arrivals[i] - state.last_arrivals[i]);
        state.last_arrivals = arrivals;
        let total: u64 = tick_arrivals.iter().sum();
        if total > 0 {
            let mix: [f64; LEVELS] =
                std::array::from_fn(|i| tick_arrivals[i] as f64 / total as f64);
            state.shares = Some(match state.shares {
                Some(old) => std::array::from_fn(|i| old[i] + SHARE_SMOOTHING * (mix[i] - old[i])),
                None => mix,
            });
        }
        let (Some(measurement), Some(dt)) = (sample, dt) else {
            return;
        };
        if floored > 0 && !inner.floor_tracking.is_zero() {
            let applied = state.pid.output() - floored as f64 / decided as f64;
            state.pid.track(applied, dt, inner.floor_tracking);
        }
        // The server had slack through the whole tick (for a queue: nobody waits, and most
        // requests found a free slot), so any share still shed is work turned away that the
        // server could have done. The integral
        // would unwind only at ki × setpoint a second (1.6 s from a 0.65 shed at the default
        // gains and a 20 ms setpoint), so it lets go of a share that doubles with each
        // consecutive idle tick: one idle tick (one client too many shed under a steady
        // overload) releases a little, a queue that stays empty releases it all within a few
        // ticks. Slow to raise, fast to release, the reverse of DAGOR's own asymmetry.
        if idle && inner.idle_release > 0.0 && state.pid.output() > 0.0 {
            let doubling = 2f64.powi(state.idle_ticks.min(32) as i32 - 1);
            state.pid.release(inner.idle_release * doubling);
            inner.idle_releases.fetch_add(1, Relaxed);
        }
        let shed = state.pid.update(measurement, dt);
        let terms = state.pid.terms();
        let probability = (1.0 - shed).clamp(0.0, 1.0);
        inner.probability.store(probability.to_bits(), Relaxed);
        let (levels, floor_from) = match state.shares {
            Some(shares) => {
                let alpha = (dt.as_secs_f64() / SPILL_FILTER.as_secs_f64()).min(1.0);
                state.slow_shed += alpha * (shed - state.slow_shed);
                let fast = split_shed(shed, &shares, inner.level_margin);
                let slow = split_shed(shed.min(state.slow_shed), &shares, inner.level_margin);
                let lowest = shares.iter().position(|&s| s > 0.0).unwrap_or(0);
                let levels: [f64; LEVELS] =
                    std::array::from_fn(|i| if i <= lowest { fast[i] } else { slow[i] });
                // Levels refused whole are below the floor's reach.
                let floor_from = levels.iter().position(|&p| p > 0.0).unwrap_or(0);
                (levels, floor_from)
            }
            // No arrivals seen yet (a ticker with no traffic): every level alike.
            None => ([probability; LEVELS], 0),
        };
        inner.floor_from.store(floor_from, Relaxed);
        for (slot, p) in inner.level_probability.iter().zip(levels) {
            slot.store(p.to_bits(), Relaxed);
        }
        inner.series.probability.set(probability);
        inner.series.error.set(terms.error);
        inner.series.p.set(terms.p);
        inner.series.i.set(terms.i);
        inner.series.d.set(terms.d);
        if let Some(callback) = &inner.on_shed {
            callback(shed);
        }
        inner.shed_tx.send_if_modified(|old| {
            let changed = *old != shed;
            *old = shed;
            changed
        });
    }
}

/// Builds an [`AdmissionController`]; [`build`](Self::build) checks every value.
#[must_use]
pub struct AdmissionControllerBuilder {
    signal: Box<dyn Signal>,
    name: String,
    tick: Duration,
    setpoint: f64,
    gains: (f64, f64, f64),
    min_admission: f64,
    anti_windup: AntiWindup,
    derivative_filter: Duration,
    measurement_filter: Duration,
    adaptive_filter: f64,
    dead_band: f64,
    error_limit: Option<f64>,
    seed: Option<u64>,
    draw: Draw,
    floor: Option<f64>,
    floor_tracking: Duration,
    idle_release: f64,
    level_margin: f64,
    on_shed: Option<ShedCallback>,
}

impl fmt::Debug for AdmissionControllerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionControllerBuilder")
            .field("name", &self.name)
            .field("tick", &self.tick)
            .field("setpoint", &self.setpoint)
            .field("gains", &self.gains)
            .field("min_admission", &self.min_admission)
            .field("dead_band", &self.dead_band)
            .field("error_limit", &self.error_limit)
            .field("floor", &self.floor)
            .field("idle_release", &self.idle_release)
            .finish_non_exhaustive()
    }
}

impl AdmissionControllerBuilder {
    /// How often the signal is sampled. Greater than zero, at most 1 hour. Default 100 ms.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// The value of the signal to steer to, in its unit (seconds for [`QueueDelay`](super::QueueDelay)).
    /// Finite and at least 0 (the signals measured are never negative). Default 0.05 (50 ms of
    /// queue delay).
    pub fn setpoint(mut self, setpoint: f64) -> Self {
        self.setpoint = setpoint;
        self
    }

    /// The gains: kp in shed share per unit of error, ki per unit of error per second, kd per
    /// unit of error per second of rate. All finite and at least 0. Default (2, 20, 0.2), tuned
    /// for queue delay in seconds around a 50 ms setpoint (see the `pid_step` example).
    pub fn gains(mut self, kp: f64, ki: f64, kd: f64) -> Self {
        self.gains = (kp, ki, kd);
        self
    }

    /// The lowest admission probability, in `[0, 1)`: keeps a trickle of requests flowing so
    /// that a signal measured on admitted requests stays fresh. Default 0.05.
    pub fn min_admission(mut self, min_admission: f64) -> Self {
        self.min_admission = min_admission;
        self
    }

    /// The integral's anti-windup. Default [`AntiWindup::Clamp`].
    pub fn anti_windup(mut self, anti_windup: AntiWindup) -> Self {
        self.anti_windup = anti_windup;
        self
    }

    /// The time constant of the derivative's low-pass filter; zero: no filter, at most 1 hour.
    /// Default 200 ms.
    pub fn derivative_filter(mut self, tau: Duration) -> Self {
        self.derivative_filter = tau;
        self
    }

    /// The time constant of a low-pass filter on the signal, ahead of the controller; at most 1
    /// hour. Default zero (no filter). See
    /// [`PidControllerBuilder::measurement_filter`](super::PidControllerBuilder::measurement_filter).
    pub fn measurement_filter(mut self, tau: Duration) -> Self {
        self.measurement_filter = tau;
        self
    }

    /// Makes the measurement filter adaptive: a jump of the signal by `scale` (in the signal's
    /// unit) halves its time constant, a larger one shortens it further. Default 0 (fixed). See
    /// [`PidControllerBuilder::adaptive_filter`](super::PidControllerBuilder::adaptive_filter).
    pub fn adaptive_filter(mut self, scale: f64) -> Self {
        self.adaptive_filter = scale;
        self
    }

    /// A hysteresis above the setpoint, in the signal's unit: the controller sheds more only
    /// once the signal passes `setpoint + width`, and sheds less as soon as it falls below the
    /// setpoint; in between it holds still. It keeps the random bursts of a busy but not
    /// overloaded server (a queue that now and then passes the setpoint at 90% load) from
    /// shedding at all, and it steadies the admission probability under overload. Finite and at
    /// least 0. Default 0 (no band). See [`PidControllerBuilder::dead_band`](super::PidControllerBuilder::dead_band).
    pub fn dead_band(mut self, width: f64) -> Self {
        self.dead_band = width;
        self
    }

    /// Bounds the error the controller sees to `±limit`, in the signal's unit (see
    /// [`PidControllerBuilder::error_limit`](super::PidControllerBuilder::error_limit)): behind
    /// a long line, the queue's expected wait can jump from 0 to 25 setpoints within one tick
    /// of a surge, and unbounded, the P and D terms then slam the shed fraction between 0 and
    /// its cap while the anti-windup holds the integral still. Bounded, the output stays
    /// where the integral can learn the share to shed. Greater than 0 (NaN refused); infinity
    /// means no bound. Default: 3 × the setpoint (no bound with a setpoint of 0 or less), which
    /// the recommended short line never reaches. A tighter bound (1 × setpoint: the error then
    /// lies in ±setpoint, so the integral steers the signal's median rather than its mean)
    /// served more behind a long line under a closed-loop generator (wrk) but let the
    /// admission probability swing more in the `pid_step` step scenario.
    pub fn error_limit(mut self, limit: f64) -> Self {
        self.error_limit = Some(limit);
        self
    }

    /// Seeds the admission draws, so that a simulation is repeatable. Default: a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How requests are chosen for admission. Default [`Draw::Random`].
    pub fn draw(mut self, draw: Draw) -> Self {
        self.draw = draw;
        self
    }

    /// Requests that arrive while the signal's [`instant`](super::Signal::instant) reading is
    /// below `floor` (in the signal's unit) are admitted whatever the draw says: with
    /// [`QueueDelay`](super::QueueDelay), a request that would wait less than the floor. Below
    /// the setpoint the controller has nothing to correct, and refusing there would only let
    /// the queue run dry and a worker idle (PIE, RFC 8033, keeps the same rule), so the
    /// controller sets the share admitted above the floor while the queue absorbs the
    /// moment's bursts and gaps. Finite and at least 0; 0 turns it off (no reading is below
    /// 0). Default: the setpoint. Signals without an instant reading are not affected.
    pub fn floor(mut self, floor: f64) -> Self {
        self.floor = Some(floor);
        self
    }

    /// The time constant with which the integral follows the share of requests really shed
    /// when the [`floor`](Self::floor) let in some the controller's draw refused
    /// (back-calculation from the actuator, [`PidController::track`](super::PidController::track)):
    /// the floor shows that the controller sheds more than the server needs, and the integral
    /// learns it. Zero turns it off; at most 1 hour. Default 4 s: long against a tick, since
    /// the floor's admissions are as noisy as the arrivals.
    pub fn floor_tracking(mut self, tracking: Duration) -> Self {
        self.floor_tracking = tracking;
        self
    }

    /// How fast the shed falls once the server has slack: after each tick in which the signal
    /// reports itself idle ([`Signal::idle`](super::Signal::idle): for
    /// [`QueueDelay`](super::QueueDelay), nobody waits at the sample and fewer than half of the
    /// requests let in since the last one had to wait), the integral lets go of `share` of
    /// itself, doubled at each further consecutive idle tick (0.25, 0.5, all). A
    /// queue held at its setpoint makes nearly every request wait, and one idle tick (a shed
    /// one client too large, which leaves the server at about 90% load and most requests
    /// waiting, is not idle) releases a quarter; after a surge the queue runs empty and the
    /// shed is gone within about three ticks instead of the integral's own pace (ki ×
    /// setpoint a second). In `[0, 1]`; 0 turns it off. Default 0.25: over HTTP (the
    /// `crush_http` example, 3× then 1×) the shed was at 0 0.40–0.55 s after the surge
    /// against 1.15–1.25 s without, in the same runs (0.1: 0.65–0.75 s against 0.90–1.25 s).
    pub fn idle_release(mut self, share: f64) -> Self {
        self.idle_release = share;
        self
    }

    /// How far past the levels below it the shed fraction must go before a higher
    /// [`Criticality`] loses anything, as a share of all requests (see
    /// [`try_admit_at`](AdmissionController::try_admit_at)). The controller's output moves by a
    /// few hundredths between ticks under random arrivals; when the server needs nearly all of
    /// the lowest level shed, those swings would otherwise fall on the next level. Within the
    /// plateau the integral moves on at its own pace, so a real need to shed the next level
    /// costs a fraction of a second more. In `[0, 0.5]`. Default 0.1: in the `criticality`
    /// example (3× load, 30% critical) critical goodput went from 0.91 with 0 to 0.99.
    pub fn level_margin(mut self, margin: f64) -> Self {
        self.level_margin = margin;
        self
    }

    /// Calls `callback` with the shed fraction (`1 − probability`) at every tick that updates
    /// it, under the controller's lock: keep it short (store a number). The synchronous
    /// alternative to [`subscribe`](AdmissionController::subscribe), e.g. to set a whole-client
    /// throttle's shed fraction.
    pub fn on_shed_fraction(mut self, callback: impl Fn(f64) + Send + Sync + 'static) -> Self {
        self.on_shed = Some(Box::new(callback));
        self
    }

    /// Checks the values, registers the metric series (probability 1, terms 0), and builds the
    /// controller.
    pub fn build(self) -> Result<AdmissionController, ConfigError> {
        let tick = check(
            "tick",
            self.tick,
            |t| !t.is_zero() && *t <= MAX_TIME_CONSTANT,
            "greater than zero, at most 1 hour",
        )?;
        // Delays, concurrencies and latencies are never negative: a negative setpoint would
        // shed at every reading, and the floor and the error bound derived from it would be
        // meaningless. Zero is allowed (any positive reading is an error).
        let setpoint = check(
            "setpoint",
            self.setpoint,
            |s| s.is_finite() && *s >= 0.0,
            "finite, >= 0",
        )?;
        let floor_tracking = check(
            "floor_tracking",
            self.floor_tracking,
            |t| *t <= MAX_TIME_CONSTANT,
            "at most 1 hour (zero: off)",
        )?;
        let min_admission = check(
            "min_admission",
            self.min_admission,
            |m| (0.0..1.0).contains(m),
            "in [0, 1)",
        )?;
        let level_margin = check(
            "level_margin",
            self.level_margin,
            |m| (0.0..=0.5).contains(m),
            "in [0, 0.5]",
        )?;
        let idle_release = check(
            "idle_release",
            self.idle_release,
            |r| (0.0..=1.0).contains(r),
            "in [0, 1] (0: off)",
        )?;
        let floor = match self.floor {
            Some(floor) => check(
                "floor",
                floor,
                |f| f.is_finite() && *f >= 0.0,
                "finite, >= 0",
            )?,
            None => setpoint,
        };
        let (kp, ki, kd) = self.gains;
        let pid = PidController::builder()
            .setpoint(setpoint)
            .gains(kp, ki, kd)
            .output_range(0.0, 1.0 - min_admission)
            .action(Action::Direct)
            .anti_windup(self.anti_windup)
            .derivative_filter(self.derivative_filter)
            .measurement_filter(self.measurement_filter)
            .adaptive_filter(self.adaptive_filter)
            .dead_band(0.0, self.dead_band)
            .error_limit(self.error_limit.unwrap_or(if setpoint > 0.0 {
                DEFAULT_ERROR_LIMIT * setpoint
            } else {
                f64::INFINITY
            }))
            .build()?;
        let (shed_tx, _) = watch::channel(0.0);
        Ok(AdmissionController {
            inner: Arc::new(Inner {
                series: Series::register(&self.name),
                name: self.name,
                tick,
                epoch: Instant::now(),
                signal: self.signal,
                state: Mutex::new(TickState {
                    pid,
                    last_tick: None,
                    last_counts: (0, 0),
                    idle_ticks: 0,
                    last_arrivals: [0; LEVELS],
                    shares: None,
                    slow_shed: 0.0,
                }),
                next_tick_us: AtomicU64::new(0),
                probability: AtomicU64::new(1.0f64.to_bits()),
                rng: AtomicU64::new(match self.draw {
                    Draw::Random => self.seed.unwrap_or_else(rand::random),
                    Draw::Even => 0.0f64.to_bits(),
                }),
                draw: self.draw,
                floor,
                floor_tracking,
                idle_release,
                level_margin,
                idle_releases: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                floor_admitted: AtomicU64::new(0),
                denied: AtomicU64::new(0),
                arrivals: Default::default(),
                level_probability: std::array::from_fn(|_| AtomicU64::new(1.0f64.to_bits())),
                level_credit: Default::default(),
                floor_from: AtomicUsize::new(0),
                shed_tx,
                on_shed: self.on_shed,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shed_fills_the_lowest_level_first() {
        let shares = [0.5, 0.2, 0.3, 0.0];
        assert_eq!(split_shed(0.0, &shares, 0.0), [1.0, 1.0, 1.0, 1.0]);
        let p = split_shed(0.25, &shares, 0.0);
        assert!(
            (p[0] - 0.5).abs() < 1e-12 && p[1..] == [1.0, 1.0, 1.0],
            "{p:?}"
        );
        let p = split_shed(0.6, &shares, 0.0);
        assert!(p[0] == 0.0 && (p[1] - 0.5).abs() < 1e-12 && p[2..] == [1.0, 1.0]);
        let p = split_shed(0.85, &shares, 0.0);
        assert!(p[..2] == [0.0, 0.0] && (p[2] - 0.5).abs() < 1e-12 && p[3] == 1.0);
        // A level with no recent arrivals below one being shed is refused whole.
        let p = split_shed(0.1, &[0.0, 0.5, 0.5, 0.0], 0.0);
        assert!(p[0] == 0.0 && (p[1] - 0.8).abs() < 1e-12 && p[2..] == [1.0, 1.0]);
        // One level alone is the plain shed fraction.
        let p = split_shed(0.37, &[0.0, 0.0, 1.0, 0.0], 0.1);
        assert!(
            (p[2] - 0.63).abs() < 1e-12 && p[3] == 1.0,
            "no margin below the only level"
        );
        // With a margin, the next level loses nothing until the shed passes the plateau.
        let shares = [0.7, 0.0, 0.3, 0.0];
        let p = split_shed(0.78, &shares, 0.1);
        assert!(p[0] == 0.0 && p[2] == 1.0, "{p:?}");
        let p = split_shed(0.86, &shares, 0.1);
        assert!(p[0] == 0.0 && (p[2] - 0.8).abs() < 1e-12, "{p:?}");
    }
}
