//! PID admission control: steer a measured signal (queue delay, concurrency, a latency
//! percentile) to a setpoint by admitting a share of requests.
//!
//! A controller that reacts only to the error of the moment overshoots or oscillates: it brakes
//! hard when the queue is long, the queue empties, it lets everyone in, the queue fills again.
//! The proportional term reacts to the error now, the integral term to its history (it removes
//! the error a proportional term alone leaves at equilibrium), and the derivative term to its
//! trend (it damps the swing). [`PidController`] is that arithmetic alone, with the care a real
//! loop needs: output clamped, integral anti-windup, derivative on the measurement through a
//! low-pass filter (no kick on a setpoint change or one noisy sample), and updates that scale
//! with the real time between them.
//!
//! [`AdmissionController`] samples a [`Signal`] every tick (default 100 ms, lazily, on the first
//! request after the tick), feeds the PID, and turns its output into an admission probability;
//! [`AdmissionLayer`] admits each request with that probability and refuses the rest at once
//! with [`Overloaded`](crate::Overloaded)`{ reason: AdmissionDenied }`. Requests are picked by
//! a seeded random draw, or by [`Draw::Even`] (exactly that share, evenly spread: a smoother
//! admitted stream, which queues less for the same goodput). Signals provided:
//! [`QueueDelay`] (the expected wait in a [`backpressure`](crate::backpressure) or
//! [`lifo_queue`](crate::lifo_queue) queue by Little's law, waiting / grant rate; or the oldest
//! waiter's age, which lags), [`AverageConcurrency`] (Little's `L` from a
//! [`LittleMeter`](crate::metrics::LittleMeter)) and any closure ([`signal_fn`]), such as a
//! latency percentile from your own tracker.
//!
//! The gauges `backstop_admission_probability`, `backstop_admission_error` and the P, I and D
//! terms (`backstop_admission_{p,i,d}_term`) are registered when the controller is built, and
//! refusals are counted in `backstop_admission_denied_total` (names in
//! [`crate::metrics::names`]).
//!
//! # When to use it
//! On a server whose overload shows in a signal you can measure before the callers time out:
//! queue delay is the best one. Put the layer in front of the queue it watches. Prefer, where
//! you can, to shed at the source: [`AdmissionController::subscribe`] gives the shed fraction
//! (`1 − probability`) as a `watch`, and
//! [`on_shed_fraction`](AdmissionControllerBuilder::on_shed_fraction) hands it to a callback at
//! every tick, ready to drive a whole-client throttle; spawn
//! [`AdmissionController::run_ticker`] to tick when no request passes through the layer.
//!
//! # The recommended configuration
//! The controller in front of a **short bounded line**, with even draws and a hysteresis:
//!
//! - signal [`QueueDelay::of_limiter`] of a [`BackpressureLayer`](crate::backpressure::BackpressureLayer)
//!   whose `max_waiting` is what the server drains in 1.8 setpoints (Little's law:
//!   `1.8 × setpoint × capacity`; 9 for 50 ms at 100 requests/s), `QueueFull` beyond;
//! - [`Draw::Even`];
//! - [`dead_band`](AdmissionControllerBuilder::dead_band) of 0.3 × the setpoint: it sheds more
//!   only above 1.3 × the setpoint, and lets go as soon as the delay is under it;
//! - [`measurement_filter`](AdmissionControllerBuilder::measurement_filter) of 1 s, made
//!   [`adaptive`](AdmissionControllerBuilder::adaptive_filter) at one setpoint: the queue of a
//!   server under random arrivals moves by several requests between two ticks, and the share
//!   the server can take by ~6% from one second to the next; the controller leaves that noise
//!   to the queue between the floor and the line, while a load step (a jump of several
//!   setpoints) passes the filter within a tick or two;
//! - gains (2, 26, 0.4) × 50 ms / setpoint;
//! - the default [`error_limit`](AdmissionControllerBuilder::error_limit) of 3 × the setpoint:
//!   the short line keeps the signal below it, and should the line be long after all, one
//!   sample of a queue filling within a tick moves P and D by at most that much, not to the
//!   shed fraction's cap;
//! - the default [`floor`](AdmissionControllerBuilder::floor) (the setpoint): a request that
//!   would wait less than the setpoint is always admitted, so the controller never idles a
//!   worker; the integral tracks what the floor let in, slowly
//!   ([`floor_tracking`](AdmissionControllerBuilder::floor_tracking) of 60 s: per tick the
//!   floor's share is as noisy as the arrivals);
//! - the default [`idle_release`](AdmissionControllerBuilder::idle_release) (0.25): once the
//!   signal reports a tick with slack ([`Signal::idle`]: nobody waiting at the sample, fewer
//!   than half of the requests since the last one made to wait), the integral
//!   lets go of a quarter of itself, then half, then all at each further idle tick, so a
//!   shed left over from a surge is gone within about three ticks of the queue running empty
//!   instead of unwinding at `ki × setpoint` a second (1.6 s from 0.65 at 20 ms), while the
//!   whole clients it refused wait.
//!
//! The controller holds the average queue delay and makes most of the refusals (88–98% in the
//! `pid_step` example); the line cuts the bursts of random arrivals, which a controller
//! sampling every 100 ms cannot see coming, and the floor fills the gaps. Alone, a random
//! admission share lets those bursts through: on a 2-worker server the PID alone trades goodput
//! against tail latency, over the line it gets both. The `pid_step` example measures it against
//! no control, fixed and gradient-style adaptive limits, the line alone, P, PI and the PID
//! alone (`--seeds` picks the seeds).
//!
//! What it is not: a replacement for a bound on the queue. On one server a fixed or adaptive
//! concurrency limit holds the queue delay about as well (in the example the PID's goodput ties
//! the fixed limit's exactly: both keep every worker busy). The controller earns its place
//! where the signal and the lever are apart: a delay measured on a server driving a throttle in
//! its clients (the `pid_throttle` example), a latency percentile downstream, a utilization
//! target. Nor can it admit everything at 90% load with a setpoint below the queue delay that
//! load brings (about 48 ms on 2 workers of 18 ms, by the M/G/2 approximation): it keeps
//! shedding a few percent there, as it should.
//!
//! # Example
//! ```
//! use backstop::backpressure::BackpressureLayer;
//! use backstop::pid::{AdmissionController, AdmissionLayer, Draw, QueueDelay};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! // 4 workers of 40 ms drain 100 requests/s: a line of 1.8 × 50 ms × 100/s = 9.
//! let queue = BackpressureLayer::builder("backpressure").max_in_flight(4).max_waiting(9).build()?;
//! let controller = AdmissionController::builder("admission", QueueDelay::of_limiter(queue.limiter()))
//!     .setpoint(0.050) // 50 ms of queue delay
//!     .dead_band(0.015) // shed more only above 65 ms
//!     .measurement_filter(Duration::from_secs(1))
//!     .adaptive_filter(0.050) // a jump of one setpoint halves the filter's time constant
//!     .gains(2.0, 26.0, 0.4)
//!     .floor_tracking(Duration::from_secs(60))
//!     .draw(Draw::Even)
//!     .tick(Duration::from_millis(100))
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(AdmissionLayer::new(controller.clone()))
//!     .layer(queue)
//!     .service_fn(|_req: ()| async { Ok::<_, backstop::BoxError>("ok") });
//!
//! assert_eq!(svc.ready().await?.call(()).await?, "ok");
//! assert_eq!(controller.admission_probability(), 1.0); // no queue, admit all
//! let mut shed = controller.subscribe(); // the handle a whole-client throttle would watch
//! assert_eq!(*shed.borrow_and_update(), 0.0);
//! # Ok(())
//! # }
//! ```

mod admission;
mod controller;
mod future;
mod layer;
mod service;
mod signal;

pub(crate) use self::admission::split_shed;
pub use self::admission::{AdmissionController, AdmissionControllerBuilder, Draw};
pub use self::controller::{Action, AntiWindup, PidController, PidControllerBuilder, PidTerms};
pub use self::future::ResponseFuture;
pub use self::layer::AdmissionLayer;
pub use self::service::Admission;
pub use self::signal::{AverageConcurrency, QueueDelay, Signal, SignalFn, signal_fn};
