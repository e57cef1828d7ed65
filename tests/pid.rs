//! PID admission control: the layer's contract, its signals, its configuration, and a shortened
//! step response on the simulation harness.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::backpressure::BackpressureLayer;
use backstop::lifo_queue::LifoQueueLayer;
use backstop::metrics::LittleMeter;
use backstop::pid::{
    AdmissionController, AdmissionLayer, AverageConcurrency, Draw, QueueDelay, Signal, signal_fn,
};
use backstop::sim::{ClientBehavior, Hop, LoadProfile, Scenario, ServiceTime, SimService};
use backstop::{BoxError, OverloadReason, find_overload};
use proptest::prelude::*;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceExt};

const TICK: Duration = Duration::from_millis(100);

/// A signal whose value the test sets, counting how often it is sampled.
#[derive(Clone, Default)]
struct Knob {
    value: Arc<Mutex<f64>>,
    samples: Arc<AtomicUsize>,
}

impl Knob {
    fn set(&self, v: f64) {
        *self.value.lock().unwrap() = v;
    }
}

impl Signal for Knob {
    fn sample(&self, _now: Instant) -> Option<f64> {
        self.samples.fetch_add(1, Relaxed);
        Some(*self.value.lock().unwrap())
    }
}

fn controller(knob: &Knob) -> AdmissionController {
    AdmissionController::builder("admission", knob.clone())
        .setpoint(0.05)
        // Unbounded: the arithmetic below reads the terms of errors of many setpoints.
        .error_limit(f64::INFINITY)
        .gains(2.0, 0.0, 0.0)
        .min_admission(0.0)
        .tick(TICK)
        .seed(1)
        .build()
        .unwrap()
}

/// An inner service that counts its calls.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = BoxError> + Clone {
    tower::service_fn(move |x: u32| {
        calls.fetch_add(1, Relaxed);
        async move { Ok::<_, BoxError>(x) }
    })
}

fn reason(err: &BoxError) -> Option<OverloadReason> {
    find_overload(err.as_ref()).map(|o| o.reason())
}

#[tokio::test(start_paused = true)]
async fn admits_everything_until_the_signal_passes_the_setpoint() {
    let knob = Knob::default();
    let ctl = controller(&knob);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = AdmissionLayer::new(ctl.clone()).layer(counting(calls.clone()));
    for i in 0..50 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(ctl.admission_probability(), 1.0);
    assert_eq!(calls.load(Relaxed), 50);
    assert_eq!((ctl.admitted(), ctl.denied()), (50, 0));
}

/// A signal with an instant reading the test sets (a queue's length, say).
#[derive(Clone, Default)]
struct Queue {
    sampled: Knob,
    now: Arc<Mutex<Option<f64>>>,
}

impl Signal for Queue {
    fn sample(&self, now: Instant) -> Option<f64> {
        self.sampled.sample(now)
    }

    fn instant(&self) -> Option<f64> {
        *self.now.lock().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn below_the_floor_every_request_is_admitted_whatever_the_probability() {
    let queue = Queue::default();
    let ctl = AdmissionController::builder("admission", queue.clone())
        .setpoint(0.05)
        // Unbounded: the arithmetic below reads the terms of errors of many setpoints.
        .error_limit(f64::INFINITY)
        .gains(2.0, 0.0, 0.0)
        .min_admission(0.0)
        .draw(Draw::Even)
        .tick(TICK)
        .build()
        .unwrap();
    // The sampled signal says shed half; the queue right now is longer than the floor.
    queue.sampled.set(0.30);
    *queue.now.lock().unwrap() = Some(0.08);
    let mut decisions = Vec::new();
    for _ in 0..20 {
        decisions.push(ctl.try_admit());
        advance(TICK).await;
    }
    assert_eq!(ctl.admission_probability(), 0.5);
    assert!(
        decisions.iter().any(|d| !d),
        "above the floor the draw refuses"
    );
    let floored = ctl.floor_admitted();
    assert_eq!(floored, 0);
    // The queue is short now: nothing is refused, and the floor counts what it let in.
    *queue.now.lock().unwrap() = Some(0.01);
    let denied = ctl.denied();
    for _ in 0..20 {
        assert!(ctl.try_admit());
    }
    assert_eq!(ctl.denied(), denied);
    assert_eq!(
        ctl.floor_admitted(),
        10,
        "half of them the draw would have refused"
    );
    // A signal without an instant reading leaves the draw alone.
    *queue.now.lock().unwrap() = None;
    assert!((0..4).any(|_| !ctl.try_admit()));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_admission_denied_at_once_and_never_reaches_the_inner_service() {
    let knob = Knob::default();
    let ctl = controller(&knob);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = AdmissionLayer::new(ctl.clone()).layer(counting(calls.clone()));
    svc.ready().await.unwrap().call(0).await.unwrap(); // first tick: establishes the clock
    knob.set(1.0); // 20x the setpoint: kp × 0.95 = 1.9, clamped to shed everything
    advance(TICK).await;
    let before = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(reason(&err), Some(OverloadReason::AdmissionDenied));
    assert_eq!(Instant::now(), before, "refused without waiting");
    assert_eq!(ctl.admission_probability(), 0.0);
    assert_eq!(
        calls.load(Relaxed),
        1,
        "the refused call never reached the inner service"
    );
    // The signal falls back: admission is full again at the next tick (P only, no memory).
    knob.set(0.0);
    advance(TICK).await;
    svc.ready().await.unwrap().call(2).await.unwrap();
    assert_eq!(ctl.admission_probability(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn the_signal_is_sampled_once_per_tick_however_many_requests_pass() {
    let knob = Knob::default();
    let ctl = controller(&knob);
    let mut svc = AdmissionLayer::new(ctl.clone()).layer(counting(Arc::default()));
    for _ in 0..100 {
        svc.ready().await.unwrap().call(0).await.unwrap();
    }
    assert_eq!(knob.samples.load(Relaxed), 1);
    advance(TICK / 2).await;
    svc.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(knob.samples.load(Relaxed), 1, "half a tick: no new sample");
    advance(TICK / 2).await;
    for _ in 0..100 {
        svc.ready().await.unwrap().call(0).await.unwrap();
    }
    assert_eq!(knob.samples.load(Relaxed), 2);
    // No requests, no ticks: an idle service costs nothing.
    advance(TICK * 50).await;
    assert_eq!(knob.samples.load(Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_and_of_the_controller_share_one_state() {
    let knob = Knob::default();
    let ctl = controller(&knob);
    let layer = AdmissionLayer::new(ctl.clone());
    let mut a = layer.layer(counting(Arc::default()));
    let mut b = a.clone();
    let mut c = layer.layer(counting(Arc::default()));
    a.ready().await.unwrap().call(0).await.unwrap();
    b.ready().await.unwrap().call(0).await.unwrap();
    c.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(ctl.admitted(), 3);
    assert_eq!(a.controller().admitted(), 3);
    knob.set(1.0);
    advance(TICK).await;
    let err = b.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(reason(&err), Some(OverloadReason::AdmissionDenied));
    assert_eq!(c.controller().admission_probability(), 0.0);
    assert_eq!(ctl.denied(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_shed_fraction_watch_and_the_ticker_drive_a_throttle_without_requests() {
    let knob = Knob::default();
    let ctl = controller(&knob);
    let mut shed = ctl.subscribe();
    assert_eq!(*shed.borrow_and_update(), 0.0);
    let ticker = tokio::spawn(ctl.clone().run_ticker());
    knob.set(0.30); // kp × (0.30 − 0.05) = 0.5
    tokio::time::timeout(Duration::from_secs(1), shed.changed())
        .await
        .expect("the ticker ticks with no request")
        .unwrap();
    let seen = *shed.borrow_and_update();
    assert!((seen - 0.5).abs() < 1e-9, "shed fraction {seen}");
    assert!((ctl.shed_fraction() - 0.5).abs() < 1e-9);
    assert!((ctl.admission_probability() - 0.5).abs() < 1e-9);
    let terms = ctl.terms();
    assert!((terms.error - 0.25).abs() < 1e-9, "{terms:?}");
    assert!((terms.p - 0.5).abs() < 1e-9, "{terms:?}");
    ticker.abort();
}

#[tokio::test(start_paused = true)]
async fn the_callback_hands_every_new_shed_fraction_to_a_throttle() {
    // Stands in for the whole-client throttle's shared shed-fraction handle.
    let throttle = Arc::new(Mutex::new(Vec::new()));
    let seen = throttle.clone();
    let knob = Knob::default();
    let ctl = AdmissionController::builder("admission", knob.clone())
        .setpoint(0.05)
        // Unbounded: the arithmetic below reads the terms of errors of many setpoints.
        .error_limit(f64::INFINITY)
        .gains(2.0, 0.0, 0.0)
        .min_admission(0.0)
        .on_shed_fraction(move |shed| seen.lock().unwrap().push(shed))
        .build()
        .unwrap();
    knob.set(0.05);
    let ticker = tokio::spawn(ctl.clone().run_ticker());
    // Ticks at 0 ms (the first only starts the clock), 100, 200, 300, 400 ms; each value is
    // set half a tick before the tick that reads it.
    sleep(TICK / 2).await;
    for v in [0.05, 0.30, 0.55, 0.0] {
        knob.set(v);
        sleep(TICK).await;
    }
    ticker.abort();
    let got = throttle.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    for (g, w) in got.iter().zip([0.0, 0.5, 1.0, 0.0]) {
        assert!((g - w).abs() < 1e-9, "{got:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_draws_repeat_and_even_draws_admit_the_exact_share() {
    async fn decisions(draw: Draw, seed: u64) -> Vec<bool> {
        let knob = Knob::default();
        let ctl = AdmissionController::builder("admission", knob.clone())
            .setpoint(0.0)
            .gains(1.0, 0.0, 0.0)
            .min_admission(0.0)
            .seed(seed)
            .draw(draw)
            .build()
            .unwrap();
        ctl.try_admit(); // first tick
        knob.set(2.0 / 3.0); // shed 2/3
        advance(TICK).await;
        (0..3000).map(|_| ctl.try_admit()).collect()
    }
    let a = decisions(Draw::Random, 7).await;
    assert_eq!(a, decisions(Draw::Random, 7).await, "same seed, same draws");
    assert_ne!(a, decisions(Draw::Random, 8).await);
    let admitted = a.iter().filter(|x| **x).count();
    assert!((900..1100).contains(&admitted), "about a third: {admitted}");
    let even = decisions(Draw::Even, 0).await;
    let admitted = even.iter().filter(|x| **x).count();
    assert!(
        (999..=1001).contains(&admitted),
        "exactly a third: {admitted}"
    );
    assert!(
        even.chunks(3)
            .all(|c| c.iter().filter(|x| **x).count() == 1),
        "one in every three"
    );
}

#[tokio::test(start_paused = true)]
async fn gauges_are_registered_at_build_and_follow_the_terms() {
    use backstop::metrics::names;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let knob = Knob::default();
    let ctl = metrics::with_local_recorder(&recorder, || {
        AdmissionController::builder("pid_gauges", knob.clone())
            .setpoint(0.05)
            // Unbounded: the arithmetic below reads the terms of errors of many setpoints.
            .error_limit(f64::INFINITY)
            .gains(1.0, 2.0, 0.0)
            .build()
            .unwrap()
    });
    // A snapshot of the debugging recorder resets what it read: take one per check point.
    type Snap = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;
    let read = |snap: &Snap, metric: &str| -> f64 {
        snap.iter()
            .find(|(k, ..)| {
                k.key().name() == metric && k.key().labels().any(|l| l.value() == "pid_gauges")
            })
            .map(|(.., v)| match v {
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Counter(c) => *c as f64,
                DebugValue::Histogram(_) => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{metric} not registered"))
    };
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(read(&snap, names::ADMISSION_PROBABILITY), 1.0);
    for metric in [
        names::ADMISSION_ERROR,
        names::ADMISSION_P_TERM,
        names::ADMISSION_I_TERM,
        names::ADMISSION_D_TERM,
        names::ADMISSION_DENIED,
    ] {
        assert_eq!(read(&snap, metric), 0.0, "{metric}");
    }
    ctl.try_admit();
    knob.set(0.25);
    advance(TICK).await;
    ctl.try_admit();
    // error 0.2: P = 0.2, I = 2 × 0.2 × 0.1 = 0.04, output 0.24.
    let snap = snapshotter.snapshot().into_vec();
    assert!((read(&snap, names::ADMISSION_ERROR) - 0.2).abs() < 1e-9);
    assert!((read(&snap, names::ADMISSION_P_TERM) - 0.2).abs() < 1e-9);
    assert!((read(&snap, names::ADMISSION_I_TERM) - 0.04).abs() < 1e-9);
    assert_eq!(read(&snap, names::ADMISSION_D_TERM), 0.0);
    assert!((read(&snap, names::ADMISSION_PROBABILITY) - 0.76).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn by_default_one_sample_of_many_setpoints_moves_p_by_three_setpoints_at_most() {
    let knob = Knob::default();
    let ctl = AdmissionController::builder("admission", knob.clone())
        .setpoint(0.05)
        .gains(2.0, 0.0, 0.0)
        .tick(TICK)
        .build()
        .unwrap();
    ctl.try_admit();
    knob.set(1.0); // 20 setpoints
    advance(TICK).await;
    ctl.try_admit();
    // The error is bounded at 3 × 0.05: P = 2 × 0.15, not the cap (unbounded: 1.9).
    let t = ctl.terms();
    assert!((t.error - 0.15).abs() < 1e-12, "{t:?}");
    assert!((ctl.admission_probability() - 0.7).abs() < 1e-12, "{t:?}");
}

#[test]
fn bad_configuration_is_a_config_error_naming_the_field() {
    let b = || AdmissionController::builder("admission", signal_fn(|_| None));
    let field = |r: Result<AdmissionController, backstop::ConfigError>| r.unwrap_err().field();
    assert_eq!(field(b().tick(Duration::ZERO).build()), "tick");
    assert_eq!(field(b().gains(-0.1, 1.0, 0.0).build()), "kp");
    assert_eq!(field(b().gains(1.0, f64::NAN, 0.0).build()), "ki");
    assert_eq!(field(b().gains(1.0, 1.0, -1.0).build()), "kd");
    assert_eq!(field(b().min_admission(1.0).build()), "min_admission");
    assert_eq!(field(b().min_admission(f64::NAN).build()), "min_admission");
    assert_eq!(field(b().setpoint(f64::INFINITY).build()), "setpoint");
    assert_eq!(field(b().dead_band(-0.01).build()), "dead_band.above");
    assert_eq!(
        field(b().dead_band(f64::INFINITY).build()),
        "dead_band.above"
    );
    assert_eq!(field(b().floor(f64::NAN).build()), "floor");
    assert_eq!(field(b().floor(-1.0).build()), "floor");
    assert_eq!(field(b().floor(f64::INFINITY).build()), "floor");
    assert_eq!(field(b().error_limit(0.0).build()), "error_limit");
    assert_eq!(field(b().error_limit(f64::NAN).build()), "error_limit");
    let err = b().error_limit(-1.0).build().unwrap_err();
    assert!(err.to_string().contains("> 0"), "{err}");
    let err = b().tick(Duration::ZERO).build().unwrap_err();
    assert!(err.to_string().contains("greater than zero"), "{err}");
}

fn sleepy()
-> impl Service<http::Request<u64>, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|req: http::Request<u64>| async move {
        sleep(Duration::from_millis(*req.body())).await;
        Ok::<_, BoxError>(())
    })
}

#[tokio::test(start_paused = true)]
async fn queue_delay_of_a_backpressure_queue_is_waiting_over_grant_rate() {
    let bp = BackpressureLayer::builder("backpressure")
        .max_in_flight(1)
        .max_waiting(100)
        .build()
        .unwrap();
    let expected = QueueDelay::of_limiter(bp.limiter());
    let oldest = QueueDelay::of_limiter(bp.limiter()).oldest_waiter();
    let svc = bp.layer(sleepy());
    assert_eq!(expected.sample(Instant::now()), Some(0.0), "empty queue");
    // One request runs 100 ms at a time: 10 per second are granted.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(100))));
    }
    for _ in 0..20 {
        sleep(Duration::from_millis(100)).await;
        expected.sample(Instant::now());
    }
    // After 2 s: about 20 granted, 9 or 10 waiting at 10 per second: about 0.95 s to wait for
    // a newcomer, while the oldest waiter has waited 2 s.
    let wait = expected.sample(Instant::now()).unwrap();
    assert!((wait - 0.95).abs() < 0.2, "expected wait {wait}");
    let age = oldest.sample(Instant::now()).unwrap();
    assert!((age - 2.0).abs() < 0.11, "oldest waiter {age}");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(expected.sample(Instant::now()), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn queue_delay_at_light_load_divides_by_the_drain_rate_not_the_arrival_rate() {
    // One slot, 100 ms each: the queue drains 10 per second.
    let bp = BackpressureLayer::builder("backpressure")
        .max_in_flight(1)
        .max_waiting(100)
        .build()
        .unwrap();
    let signal = QueueDelay::of_limiter(bp.limiter());
    let svc = bp.layer(sleepy());
    let mut tasks = Vec::new();
    // Saturated for 2 s: the signal learns the drain rate.
    for _ in 0..20 {
        tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(100))));
    }
    for _ in 0..25 {
        sleep(Duration::from_millis(100)).await;
        signal.sample(Instant::now());
    }
    // Then 2 per second for 5 s: grants fall to the arrival rate, nobody waits.
    for _ in 0..10 {
        tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(100))));
        for _ in 0..5 {
            sleep(Duration::from_millis(100)).await;
            signal.sample(Instant::now());
        }
    }
    // A burst of 4: one runs, 3 wait, which drain in 0.3 s (3 / 2 per second would read 1.5 s).
    for _ in 0..4 {
        tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(100))));
    }
    sleep(Duration::from_millis(1)).await;
    let wait = signal.sample(Instant::now()).unwrap();
    assert!((0.25..0.45).contains(&wait), "expected wait {wait}");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn queue_delay_of_a_lifo_queue_reads_its_waiters() {
    let lifo = LifoQueueLayer::builder("lifo_queue")
        .max_in_flight(1)
        .build()
        .unwrap();
    let expected = QueueDelay::of_queue(lifo.queue());
    let oldest = QueueDelay::of_queue(lifo.queue()).oldest_waiter();
    let svc = lifo.layer(sleepy());
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(1_000))));
    }
    sleep(Duration::from_millis(50)).await;
    let age = oldest.sample(Instant::now()).unwrap();
    assert!((age - 0.05).abs() < 0.002, "oldest waiter {age}");
    // Nothing granted since the first sample: the expected wait falls back to the head's age.
    assert_eq!(expected.sample(Instant::now()), Some(age));
    for t in tasks {
        let _ = t.await.unwrap(); // the LIFO queue sheds the stale waiters
    }
}

#[tokio::test(start_paused = true)]
async fn average_concurrency_reads_a_little_meter() {
    let meter = LittleMeter::builder("pid_little").build().unwrap();
    let signal = AverageConcurrency::new(&meter).utilization(4.0);
    assert_eq!(
        signal.sample(Instant::now()),
        None,
        "first sample: no interval yet"
    );
    let a = meter.start();
    let b = meter.start();
    advance(Duration::from_secs(1)).await;
    let v = signal.sample(Instant::now()).unwrap();
    assert!((v - 0.5).abs() < 1e-9, "2 in flight of 4: {v}");
    drop((a, b));
    advance(Duration::from_secs(1)).await;
    assert_eq!(signal.sample(Instant::now()), Some(0.0));
}

// ----- the recommended configuration on the simulation harness, shortened -----

/// How a simulated server is controlled: the PID's gains, its hysteresis above the setpoint,
/// and the line under it.
#[derive(Clone, Copy)]
struct Control {
    gains: Option<(f64, f64, f64)>,
    setpoint: f64,
    band: f64,
    line: usize,
    filter: Duration,
    /// The adaptive filter's scale (0: a fixed time constant).
    filter_scale: f64,
    /// The floor tracking time constant.
    floor_tracking: Duration,
}

/// The recommended configuration at `setpoint` on a server draining `capacity` per second:
/// gains (2, 26, 0.4) × 50 ms / setpoint, a hysteresis of 0.3 setpoint, a 1 s filter on the
/// signal made adaptive at one setpoint, even draws, the default floor (the setpoint) with a
/// 60 s tracking, over a line of what the server drains in 1.8 setpoints.
fn recommended(setpoint: f64, capacity: f64) -> Control {
    let scale = 0.050 / setpoint;
    Control {
        gains: Some((2.0 * scale, 26.0 * scale, 0.4 * scale)),
        setpoint,
        band: 0.3 * setpoint,
        line: (1.8 * setpoint * capacity).round() as usize,
        filter: Duration::from_secs(1),
        filter_scale: setpoint,
        floor_tracking: Duration::from_secs(60),
    }
}

/// A fixed limit sized by Little's law for the target: 10 in flight, `setpoint × capacity`
/// waiting, no controller.
fn fixed(setpoint: f64, capacity: f64) -> Control {
    Control {
        gains: None,
        setpoint,
        band: 0.0,
        line: (setpoint * capacity).round() as usize,
        filter: Duration::ZERO,
        filter_scale: 0.0,
        floor_tracking: Duration::from_secs(4),
    }
}

/// The earlier rows: the PID over an unbounded FIFO queue, no hysteresis.
fn alone(gains: Option<(f64, f64, f64)>) -> Control {
    Control {
        gains,
        setpoint: TARGET,
        band: 0.0,
        line: 100_000,
        filter: Duration::ZERO,
        filter_scale: 0.0,
        floor_tracking: Duration::from_secs(4),
    }
}

/// One 100 ms sample: time, oldest waiter's age, admission probability.
type Sample = (Duration, f64, f64);

struct SimRun {
    report: backstop::sim::SimReport,
    samples: Vec<Sample>,
    /// (sent at, latency) of every request the server stack answered.
    accepted: Vec<(Duration, Duration)>,
    /// Refused by the controller, and by the line.
    denied: u64,
    line_refused: u64,
}

impl SimRun {
    /// 1 s means of `pick` over the samples of seconds `from..to`.
    fn per_second(&self, from: u64, to: u64, pick: fn(&Sample) -> f64) -> Vec<f64> {
        let s = Duration::from_secs;
        (from..to)
            .map(|sec| {
                let xs: Vec<f64> = self
                    .samples
                    .iter()
                    .filter(|x| x.0 >= s(sec) && x.0 < s(sec + 1))
                    .map(pick)
                    .collect();
                xs.iter().sum::<f64>() / xs.len().max(1) as f64
            })
            .collect()
    }

    fn goodput(&self, from: u64, to: u64, capacity: f64) -> f64 {
        let s = Duration::from_secs;
        let good: u64 = self
            .report
            .series
            .iter()
            .filter(|b| b.start >= s(from) && b.start < s(to))
            .map(|b| b.goodput)
            .sum();
        good as f64 / (to - from) as f64 / capacity
    }

    fn p99(&self, from: u64, to: u64) -> Duration {
        let s = Duration::from_secs;
        let mut lat: Vec<Duration> = self
            .accepted
            .iter()
            .filter(|(at, _)| *at >= s(from) && *at < s(to))
            .map(|(_, l)| *l)
            .collect();
        lat.sort();
        lat[lat.len() * 99 / 100]
    }

    /// Admission probability, every 100 ms, from `from` on.
    fn probability_after(&self, from: u64) -> Vec<f64> {
        let from = Duration::from_secs(from);
        self.samples
            .iter()
            .filter(|x| x.0 >= from)
            .map(|x| x.2)
            .collect()
    }
}

/// Runs `workers` workers with a log-normal service time of mean `mean` (cv 0.5) under
/// `profile` (Poisson arrivals, users wait 1 s), controlled by `control`.
fn simulate(
    workers: usize,
    mean: Duration,
    profile: LoadProfile,
    surge: (u64, u64),
    control: Control,
    seed: u64,
) -> SimRun {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = Instant::now();
        let queue = BackpressureLayer::builder("backpressure")
            .max_in_flight(workers)
            .max_waiting(control.line)
            .build()
            .unwrap();
        let limiter = queue.limiter().clone();
        let ctl = control.gains.map(|(kp, ki, kd)| {
            AdmissionController::builder("admission", QueueDelay::of_limiter(&limiter))
                .setpoint(control.setpoint)
                .gains(kp, ki, kd)
                .dead_band(control.band)
                .measurement_filter(control.filter)
                .adaptive_filter(control.filter_scale)
                .floor_tracking(control.floor_tracking)
                .draw(Draw::Even)
                .build()
                .unwrap()
        });
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (ctl2, acc2) = (ctl.clone(), accepted.clone());
        let hop = Hop::new("server", workers, ServiceTime::LogNormal { mean, cv: 0.5 }).stack(
            move |server| {
                let queued = SimService::new(queue.layer(server));
                let inner = match &ctl2 {
                    Some(c) => SimService::new(AdmissionLayer::new(c.clone()).layer(queued)),
                    None => queued,
                };
                let acc = acc2.clone();
                SimService::new(tower::service_fn(move |req| {
                    let (inner, acc) = (inner.clone(), acc.clone());
                    async move {
                        let sent = Instant::now();
                        let result = inner.oneshot(req).await;
                        if result.is_ok() {
                            acc.lock().unwrap().push((sent - start, sent.elapsed()));
                        }
                        result
                    }
                }))
            },
        );
        let s = Duration::from_secs;
        let scenario = Scenario::builder("pid")
            .seed(seed)
            .profile(profile)
            .clients(ClientBehavior::default())
            .surge(s(surge.0), s(surge.1))
            .hop(hop)
            .build()
            .unwrap();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (samples2, ctl3, limiter2) = (samples.clone(), ctl.clone(), limiter.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                let now = interval.tick().await;
                let delay = limiter2.oldest_wait().map_or(0.0, |d| d.as_secs_f64());
                let p = ctl3.as_ref().map_or(1.0, |c| c.admission_probability());
                samples2.lock().unwrap().push((now - start, delay, p));
            }
        });
        let report = scenario.run_async().await;
        let passed = ctl.as_ref().map_or(0, |c| c.admitted());
        let denied = ctl.as_ref().map_or(0, |c| c.denied());
        // What the controller let through either got a slot or found the line full (users
        // wait 1 s, longer than any wait a line this short allows).
        let line_refused = match ctl {
            Some(_) => passed.saturating_sub(limiter.stats().admitted),
            None => 0,
        };
        let samples = samples.lock().unwrap().clone();
        let accepted = accepted.lock().unwrap().clone();
        SimRun {
            report,
            samples,
            accepted,
            denied,
            line_refused,
        }
    })
}

const WARM: u64 = 4;
const SURGE: u64 = 10;
const COOL: u64 = 4;
const TARGET: f64 = 0.05;

/// 10 workers, 100 ms: 100 requests/s; 50 → 300 → 50 requests/s.
fn step(control: Control, seed: u64) -> SimRun {
    let s = Duration::from_secs;
    simulate(
        10,
        Duration::from_millis(100),
        LoadProfile::new()
            .step(s(WARM), 50.0)
            .step(s(SURGE), 300.0)
            .step(s(COOL), 50.0),
        (WARM, WARM + SURGE),
        control,
        seed,
    )
}

#[test]
fn the_recommended_configuration_meets_the_step_targets() {
    for seed in [1, 2] {
        let run = step(recommended(TARGET, 100.0), seed);
        let (from, to) = (WARM, WARM + SURGE);
        // Queue delay within 2x the target from 2 s after the step (1 s means).
        let delay = run.per_second(from, to, |x| x.1);
        assert!(
            delay[2..].iter().all(|d| *d <= 2.0 * TARGET),
            "seed {seed}: delay per second {delay:?}"
        );
        let goodput = run.report.summary.surge_goodput_fraction;
        assert!(goodput >= 0.90, "seed {seed}: goodput {goodput}");
        // Admission probability within ±0.10 of its mean from 5 s after the step.
        let p = run.per_second(from + 5, to, |x| x.2);
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        assert!(
            p.iter().all(|x| (x - mean).abs() < 0.10),
            "seed {seed}: probability per second {p:?}"
        );
        // The controller, not the line, does most of the shedding: 0.2 to 0.45 admitted, and at
        // least two refusals in three are the controller's (the line takes the first second
        // of the surge, while the filtered signal rises; the example counts 88-98% over a
        // 20 s surge).
        // (The probability rests a little below capacity / load, 0.33: the floor lets in the
        // rest when the queue runs short, and the slow floor tracking leaves it there.)
        assert!((0.20..0.45).contains(&mean), "seed {seed}: mean {mean}");
        assert!(
            run.denied >= 2 * run.line_refused,
            "seed {seed}: denied {} line {}",
            run.denied,
            run.line_refused
        );
        // Back to full admission within 2 s of the load falling, and staying there: the last
        // 100 ms sample below 1 is within the first 2 s.
        let after = run.probability_after(to);
        let last_low = after.iter().rposition(|p| *p < 1.0);
        assert!(
            last_low.is_none_or(|i| i < 20) && after.len() > 20,
            "seed {seed}: admission after the fall {after:?}"
        );
    }
}

impl SimRun {
    /// Seconds from `from` until the queue delay, averaged over any 1 s window (slid in 100 ms
    /// steps), stays within `bound` to `to`; `None` if the last window is still above. The
    /// `pid_step` example's settle time.
    fn settle(&self, from: u64, to: u64, bound: f64) -> Option<f64> {
        let s = Duration::from_secs;
        let delays: Vec<f64> = self
            .samples
            .iter()
            .filter(|x| x.0 >= s(from) && x.0 < s(to))
            .map(|x| x.1)
            .collect();
        let means: Vec<f64> = delays
            .windows(10)
            .map(|w| w.iter().sum::<f64>() / 10.0)
            .collect();
        match means.iter().rposition(|d| *d > bound) {
            None => Some(0.0),
            Some(i) if i + 1 < means.len() => Some((i + 1) as f64 * 0.1),
            Some(_) => None,
        }
    }
}

/// The `pid_step` example's step scenario (10 s at 50%, 20 s at 300%, 10 s at 50% of 100
/// requests/s) on seeds 1 to 3: the recommended configuration against no control, a fixed
/// limit sized for the target, P only and PI (the latter two over the unbounded queue, as in
/// the example; the example's gradient and line-alone rows are left out here). The PID must
/// match or beat the best of them on goodput and on settle time, and hold its admission
/// probability within 10% of its mean, per second, from 5 s after the step. (The example runs
/// more seeds; on one of eight the swing reaches 12.5%: see the README.)
#[test]
fn on_the_reference_seed_the_pid_beats_every_other_row_and_holds_its_probability_steady() {
    let s = Duration::from_secs;
    let (warm, surge, cool) = (10, 20, 10);
    let profile = LoadProfile::new()
        .step(s(warm), 50.0)
        .step(s(surge), 300.0)
        .step(s(cool), 50.0);
    let (from, to) = (warm, warm + surge);
    let run = |control, seed| {
        simulate(
            10,
            Duration::from_millis(100),
            profile.clone(),
            (from, to),
            control,
            seed,
        )
    };
    let figures = |r: &SimRun| (r.goodput(from, to, 100.0), r.settle(from, to, 2.0 * TARGET));
    for seed in [1, 2, 3] {
        let pid = run(recommended(TARGET, 100.0), seed);
        let (goodput, settle) = figures(&pid);
        let others = [
            ("no control", alone(None)),
            ("fixed limit", fixed(TARGET, 100.0)),
            ("P", alone(Some((2.0, 0.0, 0.0)))),
            ("PI", alone(Some((2.0, 20.0, 0.0)))),
        ];
        for (name, control) in others {
            let (g, st) = figures(&run(control, seed));
            assert!(
                goodput >= g,
                "seed {seed}, {name}: goodput {g} against the PID's {goodput}"
            );
            let settle = settle.expect("the PID settles");
            assert!(
                st.is_none_or(|st| settle <= st),
                "seed {seed}, {name}: settles in {st:?}, the PID in {settle}"
            );
        }
        let p = pid.per_second(from + 5, to, |x| x.2);
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        let swing = p.iter().map(|x| (x - mean).abs()).fold(0.0, f64::max) / mean;
        assert!(
            swing < 0.10,
            "seed {seed}: swing {swing} of mean {mean}: {p:?}"
        );
    }
}

#[test]
fn the_recommended_configuration_meets_the_netflix_targets() {
    // 2 workers, 18 ms: 111 requests/s; 50 → 200 → 100 requests/s, 20 s each (the example runs
    // 50 → 90 → 200 → 100, 100 s each). Target 30 ms: a line of 7.
    let s = Duration::from_secs;
    let capacity = 2.0 / 0.018;
    for seed in [1, 2] {
        let run = simulate(
            2,
            Duration::from_millis(18),
            LoadProfile::new()
                .step(s(20), 50.0)
                .step(s(20), 200.0)
                .step(s(20), 100.0),
            (20, 40),
            recommended(0.030, capacity),
            seed,
        );
        let goodput = run.goodput(20, 40, capacity);
        assert!(goodput >= 0.95, "seed {seed}: goodput {goodput}");
        let (unloaded, loaded) = (run.p99(0, 20), run.p99(20, 40));
        assert!(
            loaded <= 2 * unloaded,
            "seed {seed}: p99 {loaded:?} against {unloaded:?} unloaded"
        );
        let after = run.probability_after(40);
        let back = after.iter().position(|p| *p >= 1.0);
        assert!(
            back.is_some_and(|i| i <= 100),
            "seed {seed}: admission after the fall {after:?}"
        );
    }
}

#[test]
fn without_control_goodput_collapses_and_p_only_keeps_a_steady_state_error() {
    let none = step(alone(None), 1);
    let goodput = none.report.summary.surge_goodput_fraction;
    assert!(goodput < 0.5, "no control: goodput {goodput}");
    let p = step(alone(Some((2.0, 0.0, 0.0))), 1);
    // P only: the shed share must come from the error, so the delay settles above the target:
    // kp × (d − 0.05) = 2/3 gives d ≈ 0.38 s.
    let late = p.per_second(WARM + 3, WARM + SURGE, |x| x.1);
    let mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!(mean > 2.0 * TARGET, "P only: delay {late:?}");
    let pi = step(alone(Some((2.0, 20.0, 0.0))), 1);
    let late = pi.per_second(WARM + 3, WARM + SURGE, |x| x.1);
    let mean_pi = late.iter().sum::<f64>() / late.len() as f64;
    assert!(mean_pi < mean / 2.0, "PI removes it: {mean_pi} vs {mean}");
}

// ----- every call one outcome; dropped futures give back the queue's permits -----

fn script() -> impl Strategy<Value = Vec<(u64, bool, f64)>> {
    proptest::collection::vec((0u64..50, any::<bool>(), 0.0f64..0.3), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_call_has_one_outcome_and_permits_come_back(steps in script()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let queue = BackpressureLayer::builder("backpressure").max_in_flight(2).max_waiting(3).build().unwrap();
            let limiter = queue.limiter().clone();
            let knob = Knob::default();
            let ctl = AdmissionController::builder("admission", knob.clone()).setpoint(0.05).gains(3.0, 5.0, 0.0)
                .min_admission(0.0).seed(3).build().unwrap();
            let served = Arc::new(AtomicU64::new(0));
            let s2 = served.clone();
            let svc = AdmissionLayer::new(ctl.clone()).layer(queue.layer(tower::service_fn(move |ms: u64| {
                let s2 = s2.clone();
                async move { sleep(Duration::from_millis(ms)).await; s2.fetch_add(1, Relaxed); Ok::<_, BoxError>(()) }
            })));
            let (mut ok, mut denied, mut full, mut dropped) = (0u64, 0u64, 0u64, 0u64);
            let n = steps.len() as u64;
            let mut tasks = Vec::new();
            for (ms, drop_it, signal) in steps {
                knob.set(signal);
                let fut = svc.clone().oneshot(ms);
                if drop_it {
                    // Poll once then drop: it may hold a slot or a place in line.
                    let mut fut = Box::pin(fut);
                    let _ = futures::poll!(fut.as_mut());
                    drop(fut);
                    dropped += 1;
                } else {
                    tasks.push(tokio::spawn(fut));
                }
                advance(Duration::from_millis(20)).await;
            }
            for t in tasks {
                match t.await.unwrap() {
                    Ok(()) => ok += 1,
                    Err(e) => match reason(&e) {
                        Some(OverloadReason::AdmissionDenied) => denied += 1,
                        Some(OverloadReason::QueueFull) => full += 1,
                        other => panic!("unexpected {other:?}"),
                    },
                }
            }
            assert_eq!(ok + denied + full + dropped, n);
            assert_eq!(ctl.admitted() + ctl.denied(), n, "one decision per call");
            let stats = limiter.stats();
            assert_eq!((stats.in_flight, stats.waiting), (0, 0), "every permit came back");
            assert!(served.load(Relaxed) >= ok);
        });
    }
}

/// A signal whose value and idleness the test sets.
#[derive(Clone, Default)]
struct IdleKnob {
    value: Arc<Mutex<(f64, bool)>>,
}

impl IdleKnob {
    fn set(&self, v: f64, idle: bool) {
        *self.value.lock().unwrap() = (v, idle);
    }
}

impl Signal for IdleKnob {
    fn sample(&self, _now: Instant) -> Option<f64> {
        Some(self.value.lock().unwrap().0)
    }

    fn idle(&self) -> Option<bool> {
        Some(self.value.lock().unwrap().1)
    }
}

/// Ticks until the shed fraction is 0 (at most 100), the knob reading `value` and `idle`.
async fn ticks_to_release(ctl: &AdmissionController, knob: &IdleKnob, idle: bool) -> usize {
    knob.set(0.0, idle);
    for ticks in 1..=100 {
        advance(TICK).await;
        ctl.poll_tick(Instant::now());
        if ctl.shed_fraction() == 0.0 {
            return ticks;
        }
    }
    100
}

/// The crush test's controller (20 ms setpoint, default gains), driven to shed about 0.65.
async fn shedding(knob: &IdleKnob, idle_release: Option<f64>) -> AdmissionController {
    let mut b = AdmissionController::builder("admission", knob.clone())
        .setpoint(0.020)
        .tick(TICK);
    if let Some(share) = idle_release {
        b = b.idle_release(share);
    }
    let ctl = b.build().unwrap();
    ctl.poll_tick(Instant::now());
    knob.set(0.040, false); // one setpoint over: the integral climbs 0.04 a tick
    while ctl.shed_fraction() < 0.65 {
        advance(TICK).await;
        ctl.poll_tick(Instant::now());
    }
    ctl
}

#[tokio::test(start_paused = true)]
async fn an_idle_signal_releases_the_shed_in_a_few_ticks_not_at_the_integrals_pace() {
    // The default: 0.25 of the integral at the first idle tick, doubling at each further one.
    let knob = IdleKnob::default();
    let fast = shedding(&knob, None).await;
    let fast_ticks = ticks_to_release(&fast, &knob, true).await;
    assert!(fast_ticks <= 4, "released in {fast_ticks} ticks");
    assert_eq!(
        fast.idle_releases() as usize,
        fast_ticks.min(fast_ticks),
        "counted"
    );
    // Off, or with the queue empty at the tick but someone having waited in it (not idle):
    // the integral unwinds at ki × setpoint = 0.4 a second, 0.04 a tick.
    let knob = IdleKnob::default();
    let off = shedding(&knob, Some(0.0)).await;
    let off_ticks = ticks_to_release(&off, &knob, true).await;
    let knob = IdleKnob::default();
    let busy = shedding(&knob, None).await;
    let busy_ticks = ticks_to_release(&busy, &knob, false).await;
    assert_eq!(off.idle_releases() + busy.idle_releases(), 0);
    assert!((13..=17).contains(&off_ticks), "{off_ticks}");
    assert_eq!(busy_ticks, off_ticks);
    assert!(off_ticks >= 2 * fast_ticks, "{off_ticks} vs {fast_ticks}");
}

#[tokio::test(start_paused = true)]
async fn one_idle_tick_in_an_overload_releases_a_quarter_of_the_integral() {
    let knob = IdleKnob::default();
    let ctl = shedding(&knob, None).await;
    // Hold at the setpoint: no error, the integral holds still.
    knob.set(0.020, false);
    advance(TICK).await;
    ctl.poll_tick(Instant::now());
    let before = ctl.terms().i;
    // One idle tick at the setpoint (no error either): only the release moves the integral.
    knob.set(0.020, true);
    advance(TICK).await;
    ctl.poll_tick(Instant::now());
    let after = ctl.terms().i;
    assert!((after - 0.75 * before).abs() < 1e-9, "{before} -> {after}");
    // Busy again: the streak ends, and the next idle tick starts from a quarter again.
    knob.set(0.020, false);
    advance(TICK).await;
    ctl.poll_tick(Instant::now());
    knob.set(0.020, true);
    advance(TICK).await;
    ctl.poll_tick(Instant::now());
    assert!(
        (ctl.terms().i - 0.5625 * before).abs() < 1e-9,
        "{:?}",
        ctl.terms()
    );
    assert_eq!(ctl.idle_releases(), 2);
}

#[tokio::test(start_paused = true)]
async fn queue_delay_is_idle_only_when_fewer_than_half_waited_since_the_last_sample() {
    let bp = BackpressureLayer::builder("backpressure")
        .max_in_flight(1)
        .max_waiting(100)
        .build()
        .unwrap();
    let signal = QueueDelay::of_limiter(bp.limiter());
    let svc = bp.layer(sleepy());
    signal.sample(Instant::now());
    assert_eq!(
        signal.idle(),
        Some(false),
        "the first sample has nothing to compare"
    );
    signal.sample(Instant::now());
    assert_eq!(signal.idle(), Some(true), "nothing happened");
    // Two requests of 10 ms at once: the second waits, and both are done before the sample.
    let a = tokio::spawn(svc.clone().oneshot(http::Request::new(10)));
    let b = tokio::spawn(svc.clone().oneshot(http::Request::new(10)));
    sleep(Duration::from_millis(50)).await;
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(
        signal.sample(Instant::now()),
        Some(0.0),
        "empty at the sample"
    );
    assert_eq!(
        signal.idle(),
        Some(false),
        "but half the requests waited since"
    );
    // One at a time: each finds the slot free.
    for _ in 0..3 {
        svc.clone().oneshot(http::Request::new(10)).await.unwrap();
    }
    signal.sample(Instant::now());
    assert_eq!(signal.idle(), Some(true));
    // Two at once, then three one at a time: one of five waited, fewer than half.
    let a = tokio::spawn(svc.clone().oneshot(http::Request::new(10)));
    let b = tokio::spawn(svc.clone().oneshot(http::Request::new(10)));
    sleep(Duration::from_millis(50)).await;
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    for _ in 0..3 {
        svc.clone().oneshot(http::Request::new(10)).await.unwrap();
    }
    signal.sample(Instant::now());
    assert_eq!(signal.idle(), Some(true), "one of five waited");
    // Someone waiting now is not idle.
    let tasks: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(100))))
        .collect();
    sleep(Duration::from_millis(1)).await;
    signal.sample(Instant::now());
    assert_eq!(signal.idle(), Some(false));
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Every field of both builders against 0, negative values, NaN, the infinities and
/// `Duration::MAX`: either a `ConfigError` naming the field, or a controller that then ticks
/// and admits without panicking.
#[tokio::test(start_paused = true)]
async fn every_builder_field_is_checked_against_extreme_values() {
    use backstop::pid::{AntiWindup, PidController};
    let field = |r: Result<AdmissionController, backstop::ConfigError>| {
        r.map(|_| ()).map_err(|e| e.field())
    };
    let b = || AdmissionController::builder("admission", signal_fn(|_| Some(1.0)));
    let floats = [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    // The admission controller's own fields.
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("setpoint"),
        Err("setpoint"),
        Err("setpoint"),
        Err("setpoint"),
    ]) {
        assert_eq!(field(b().setpoint(*v).build()), want, "setpoint {v}");
    }
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("min_admission"),
        Err("min_admission"),
        Err("min_admission"),
        Err("min_admission"),
    ]) {
        assert_eq!(
            field(b().min_admission(*v).build()),
            want,
            "min_admission {v}"
        );
    }
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("floor"),
        Err("floor"),
        Err("floor"),
        Err("floor"),
    ]) {
        assert_eq!(field(b().floor(*v).build()), want, "floor {v}");
    }
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("idle_release"),
        Err("idle_release"),
        Err("idle_release"),
        Err("idle_release"),
    ]) {
        assert_eq!(
            field(b().idle_release(*v).build()),
            want,
            "idle_release {v}"
        );
    }
    assert_eq!(field(b().idle_release(1.0).build()), Ok(()));
    assert_eq!(field(b().idle_release(1.5).build()), Err("idle_release"));
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("dead_band.above"),
        Err("dead_band.above"),
        Err("dead_band.above"),
        Err("dead_band.above"),
    ]) {
        assert_eq!(field(b().dead_band(*v).build()), want, "dead_band {v}");
    }
    for (v, want) in floats.iter().zip([
        Err("error_limit"),
        Err("error_limit"),
        Err("error_limit"),
        Ok(()),
        Err("error_limit"),
    ]) {
        assert_eq!(field(b().error_limit(*v).build()), want, "error_limit {v}");
    }
    for (v, want) in floats.iter().zip([
        Ok(()),
        Err("adaptive_filter"),
        Err("adaptive_filter"),
        Err("adaptive_filter"),
        Err("adaptive_filter"),
    ]) {
        assert_eq!(
            field(b().adaptive_filter(*v).build()),
            want,
            "adaptive_filter {v}"
        );
    }
    for (i, name) in ["kp", "ki", "kd"].into_iter().enumerate() {
        for (v, want) in floats
            .iter()
            .zip([Ok(()), Err(name), Err(name), Err(name), Err(name)])
        {
            let mut gains = [1.0, 1.0, 1.0];
            gains[i] = *v;
            assert_eq!(
                field(b().gains(gains[0], gains[1], gains[2]).build()),
                want,
                "{name} {v}"
            );
        }
    }
    // Durations: zero, and Duration::MAX (which used to overflow the tick arithmetic).
    let long = Duration::MAX;
    assert_eq!(field(b().tick(Duration::ZERO).build()), Err("tick"));
    assert_eq!(field(b().tick(long).build()), Err("tick"));
    assert_eq!(field(b().tick(Duration::from_secs(3600)).build()), Ok(()));
    assert_eq!(field(b().floor_tracking(Duration::ZERO).build()), Ok(()));
    assert_eq!(
        field(b().floor_tracking(long).build()),
        Err("floor_tracking")
    );
    assert_eq!(field(b().derivative_filter(Duration::ZERO).build()), Ok(()));
    assert_eq!(
        field(b().derivative_filter(long).build()),
        Err("derivative_filter")
    );
    assert_eq!(
        field(b().measurement_filter(Duration::ZERO).build()),
        Ok(())
    );
    assert_eq!(
        field(b().measurement_filter(long).build()),
        Err("measurement_filter")
    );
    let windup = |t| AntiWindup::BackCalculation { tracking: t };
    assert_eq!(
        field(b().anti_windup(windup(Duration::ZERO)).build()),
        Err("anti_windup.tracking")
    );
    assert_eq!(
        field(b().anti_windup(windup(long)).build()),
        Err("anti_windup.tracking")
    );
    // The messages name the range.
    let err = b().setpoint(-0.05).build().unwrap_err();
    assert!(err.to_string().contains(">= 0"), "{err}");
    let err = b().tick(long).build().unwrap_err();
    assert!(err.to_string().contains("at most 1 hour"), "{err}");

    // The pure controller: the same checks where they apply; a negative setpoint is allowed
    // there (a temperature), and the output range must be finite and ordered.
    let p = PidController::builder;
    let pfield =
        |r: Result<PidController, backstop::ConfigError>| r.map(|_| ()).map_err(|e| e.field());
    assert_eq!(pfield(p().setpoint(-1.0).build()), Ok(()));
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(pfield(p().setpoint(v).build()), Err("setpoint"));
        assert_eq!(pfield(p().bias(v).build()), Err("bias"));
        assert_eq!(pfield(p().output_range(v, 1.0).build()), Err("min"));
        assert_eq!(pfield(p().output_range(0.0, v).build()), Err("max"));
    }
    assert_eq!(pfield(p().output_range(0.0, 0.0).build()), Err("max"));
    assert_eq!(
        pfield(p().output_range(-f64::MAX, f64::MAX).build()),
        Ok(())
    );
    assert_eq!(
        pfield(p().dead_band(-1.0, 0.0).build()),
        Err("dead_band.below")
    );
    assert_eq!(
        pfield(p().derivative_filter(long).build()),
        Err("derivative_filter")
    );
    assert_eq!(
        pfield(p().measurement_filter(long).build()),
        Err("measurement_filter")
    );
    assert_eq!(
        pfield(p().anti_windup(windup(long)).build()),
        Err("anti_windup.tracking")
    );

    // What is accepted works: extreme but valid values tick and admit without panicking.
    let ctl = b()
        .setpoint(0.0)
        .gains(f64::MAX, f64::MAX, f64::MAX)
        .error_limit(f64::INFINITY)
        .min_admission(0.0)
        .floor(0.0)
        .idle_release(1.0)
        .tick(Duration::from_secs(3600))
        .derivative_filter(Duration::from_secs(3600))
        .measurement_filter(Duration::from_secs(3600))
        .floor_tracking(Duration::from_secs(3600))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = AdmissionLayer::new(ctl.clone()).layer(counting(calls.clone()));
    for i in 0..100 {
        let _ = svc.ready().await.unwrap().call(i).await;
        advance(Duration::from_secs(1800)).await;
    }
    let probability = ctl.admission_probability();
    assert!((0.0..=1.0).contains(&probability), "{probability}");
    let mut pid = p()
        .output_range(-f64::MAX, f64::MAX)
        .gains(f64::MAX, f64::MAX, f64::MAX)
        .build()
        .unwrap();
    for m in [0.0, f64::MAX, -f64::MAX] {
        assert!(!pid.update(m, Duration::MAX).is_nan());
    }
}
