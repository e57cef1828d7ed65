use std::time::Duration;

use crate::error::{ConfigError, check};

/// Which way the output moves when the measurement rises above the setpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// The textbook convention: error = setpoint − measurement, so the output falls as the
    /// measurement rises (a heater: too hot, less heat).
    #[default]
    Reverse,
    /// error = measurement − setpoint, so the output rises with the measurement (a shedder: too
    /// much queue delay, shed more). Lets all gains stay positive.
    Direct,
}

/// How the integral term is kept from winding up while the output is saturated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum AntiWindup {
    /// Conditional integration: while the output is at a limit, the integral holds still only
    /// when integrating would push it further past that limit; it keeps moving the way that
    /// brings the output back inside. It is itself kept within the output range. A
    /// proportional or derivative kick that pins the output therefore holds the integral
    /// where it was: bound the error with
    /// [`error_limit`](PidControllerBuilder::error_limit) when the measurement can jump by many
    /// setpoints in one update. (Back-calculation as the admission default measured worse:
    /// in the `pid_step` step scenario the probability's swing passed 10% on 2–3 seeds of 8
    /// instead of 1.)
    #[default]
    Clamp,
    /// Back-calculation: the integral is pulled back by (saturated − unsaturated output) /
    /// `tracking`, every update. A shorter tracking time unwinds faster.
    BackCalculation {
        /// The tracking time constant: greater than zero, at most 1 hour.
        tracking: Duration,
    },
}

/// What one update computed: the terms that make the output, for gauges and tests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PidTerms {
    /// The error the update saw (sign per [`Action`]).
    pub error: f64,
    /// The proportional term: `kp × error`.
    pub p: f64,
    /// The integral term: the running sum of `ki × error × dt`, after anti-windup.
    pub i: f64,
    /// The derivative term: `kd ×` the filtered rate of change of the measurement (never of the
    /// setpoint), signed so that it opposes the movement.
    pub d: f64,
    /// `bias + p + i + d`, clamped to `[min, max]`.
    pub output: f64,
}

/// A discrete PID controller: pure arithmetic, no clock, no async. Each
/// [`update`](Self::update) is given the measurement and the time since the last one.
///
/// - **Derivative on measurement**, through a first-order low-pass filter: a change of setpoint
///   does not kick the output, and one noisy sample is smoothed.
/// - **Anti-windup** ([`AntiWindup`]): the integral does not grow without bound while the
///   output is pinned at a limit, so the controller lets go promptly when the error reverses.
/// - **dt-aware**: the integral and the derivative scale with the real time between updates,
///   so a late tick does not change the tuning.
///
/// ```
/// use backstop::pid::PidController;
/// use std::time::Duration;
///
/// // A proportional-integral controller driving a plant that follows its input.
/// let mut pid = PidController::builder()
///     .setpoint(1.0)
///     .gains(0.5, 2.0, 0.0)
///     .output_range(-10.0, 10.0)
///     .build()?;
/// let mut y = 0.0;
/// for _ in 0..200 {
///     let u = pid.update(y, Duration::from_millis(50));
///     y += (u - y) * 0.5; // first-order plant
/// }
/// assert!((y - 1.0).abs() < 1e-3, "PI removes the steady-state error: {y}");
/// # Ok::<(), backstop::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PidController {
    config: PidConfig,
    integral: f64,
    last_measurement: Option<f64>,
    filtered_rate: f64,
    /// The measurement through the measurement filter (the raw one without a filter).
    filtered_measurement: Option<f64>,
    last: PidTerms,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct PidConfig {
    setpoint: f64,
    kp: f64,
    ki: f64,
    kd: f64,
    min: f64,
    max: f64,
    bias: f64,
    action: Action,
    anti_windup: AntiWindup,
    derivative_filter: Duration,
    measurement_filter: Duration,
    /// The jump of the measurement (from its filtered value) that halves the measurement
    /// filter's time constant; zero: a fixed time constant.
    filter_scale: f64,
    /// Measurements in `[setpoint − below, setpoint + above]` count as no error.
    dead_band: (f64, f64),
    /// Every term sees the measurement clamped to `setpoint ± error_limit`.
    error_limit: f64,
}

impl PidController {
    /// Starts a builder. Defaults: setpoint 0, kp 1, ki 0, kd 0, output in [0, 1], bias 0,
    /// [`Action::Reverse`], [`AntiWindup::Clamp`], derivative filter 0.2 s, no measurement
    /// filter (0 s, so no adaptive filter either), no dead band, no error limit (infinite).
    pub fn builder() -> PidControllerBuilder {
        PidControllerBuilder {
            config: PidConfig {
                setpoint: 0.0,
                kp: 1.0,
                ki: 0.0,
                kd: 0.0,
                min: 0.0,
                max: 1.0,
                bias: 0.0,
                action: Action::Reverse,
                anti_windup: AntiWindup::Clamp,
                derivative_filter: Duration::from_millis(200),
                measurement_filter: Duration::ZERO,
                filter_scale: 0.0,
                dead_band: (0.0, 0.0),
                error_limit: f64::INFINITY,
            },
        }
    }

    /// Feeds one measurement taken `dt` after the previous one and returns the new output. With
    /// `dt` zero, or a measurement that is not finite, the state is left alone and the last
    /// output returned.
    pub fn update(&mut self, measurement: f64, dt: Duration) -> f64 {
        let c = self.config;
        let secs = dt.as_secs_f64();
        if secs <= 0.0 || !measurement.is_finite() {
            return self.last.output;
        }
        let sign = match c.action {
            Action::Reverse => 1.0,
            Action::Direct => -1.0,
        };
        // One sample far from the setpoint (a long queue filling within a tick) moves the terms
        // no more than one `error_limit` away would: P and D cannot slam the output to a limit
        // on a burst, and the output stays where the integral can steer it.
        let measurement = measurement.clamp(c.setpoint - c.error_limit, c.setpoint + c.error_limit);
        let raw = measurement;
        // The proportional and integral terms see the filtered measurement: sampling noise
        // moves the output less. The derivative keeps its own filter on the raw one, so that
        // it still sees a sudden rise at once.
        let measurement = match self.filtered_measurement {
            Some(prev) => {
                // Adaptive: a jump of `scale` halves the time constant, one of 3 × `scale` cuts
                // it tenfold. Noise of a few tenths of `scale` barely shortens it, so a shock
                // gets through at once while the noise of a steady state stays averaged out.
                let mut tau = c.measurement_filter.as_secs_f64();
                if c.filter_scale > 0.0 {
                    let z = (measurement - prev).abs() / c.filter_scale;
                    tau /= 1.0 + z * z;
                }
                finite(prev + secs / (tau + secs) * (measurement - prev))
            }
            None => measurement,
        };
        self.filtered_measurement = Some(measurement);
        // Inside the dead band there is no error; outside it, the error is measured from the
        // band's nearer edge, so the terms do not jump at the edge.
        let (below, above) = c.dead_band;
        let reference = measurement.clamp(c.setpoint - below, c.setpoint + above);
        let error = sign * (reference - measurement);
        let p = finite(c.kp * error);

        // The derivative of the measurement, not of the error: a setpoint step moves the error
        // but not the measurement, so it does not kick. Filtered: alpha = dt / (tau + dt).
        let rate = finite(
            self.last_measurement
                .map_or(0.0, |prev| (raw - prev) / secs),
        );
        let tau = c.derivative_filter.as_secs_f64();
        let alpha = secs / (tau + secs);
        if self.last_measurement.is_some() {
            self.filtered_rate = finite(self.filtered_rate + alpha * (rate - self.filtered_rate));
        }
        self.last_measurement = Some(raw);
        let d = finite(-sign * c.kd * self.filtered_rate);

        let mut integral = finite(self.integral + c.ki * error * secs);
        // Each term is finite, so the sum may overflow to ±∞ (clamped below) but never be NaN.
        let unsaturated = c.bias + p + integral + d;
        let output = unsaturated.clamp(c.min, c.max);
        match c.anti_windup {
            AntiWindup::Clamp => {
                // Do not integrate further into a limit the output is already pinned at.
                let pushing_up = unsaturated > c.max && error > 0.0;
                let pushing_down = unsaturated < c.min && error < 0.0;
                if pushing_up || pushing_down {
                    integral = self.integral;
                }
                // And never hold an integral that alone would put the output outside its
                // range: a proportional or derivative kick the other way (a measurement
                // lagging behind its derivative) must not wind it up beyond what it can undo.
                integral = integral.clamp(c.min - c.bias, c.max - c.bias);
            }
            AntiWindup::BackCalculation { tracking } => {
                let tt = tracking.as_secs_f64().max(1e-9);
                integral += (output - unsaturated) / tt * secs;
            }
        }
        self.integral = finite(integral);
        self.last = PidTerms {
            error,
            p,
            i: integral,
            d,
            output,
        };
        output
    }

    /// Tells the controller that over the last `dt` its actuator applied `applied` instead of
    /// its output, because something after it overrode it (an admission floor that lets in
    /// requests the output would shed). The integral is pulled toward what was applied by
    /// `(applied − output) × dt / tracking` (at most the whole gap): back-calculation from the real actuator, so that
    /// the integral learns the level the process needed instead of resting on a level the
    /// override kept correcting. Does nothing when `applied` is not finite or `dt` or
    /// `tracking` is zero.
    pub fn track(&mut self, applied: f64, dt: Duration, tracking: Duration) {
        let (secs, tt) = (dt.as_secs_f64(), tracking.as_secs_f64());
        if !applied.is_finite() || secs <= 0.0 || tt <= 0.0 {
            return;
        }
        let c = self.config;
        // At most the whole gap, however long `dt` is against `tracking`.
        let pull = (applied - self.last.output) * (secs / tt).min(1.0);
        self.integral = (self.integral + pull).clamp(c.min - c.bias, c.max - c.bias);
    }

    /// Moves the integral `share` of the way to zero (`share` clamped to `[0, 1]`; NaN does
    /// nothing): the controller forgets that much of the error's history at once, faster than
    /// the integral gain would unwind it. For a shedder (zero bias, output from 0) that is
    /// letting go of a shed that the process no longer needs, as when the queue it watches
    /// ran empty; the change shows at the next update.
    pub fn release(&mut self, share: f64) {
        if share > 0.0 {
            self.integral *= 1.0 - share.min(1.0);
        }
    }

    /// The terms and the output of the last update (all zero but the output, which starts at
    /// the bias clamped to the range, before the first).
    pub fn terms(&self) -> PidTerms {
        self.last
    }

    /// The last output.
    pub fn output(&self) -> f64 {
        self.last.output
    }

    /// The setpoint.
    pub fn setpoint(&self) -> f64 {
        self.config.setpoint
    }

    /// Moves the setpoint. The derivative acts on the measurement, so this does not kick.
    pub fn set_setpoint(&mut self, setpoint: f64) {
        if setpoint.is_finite() {
            self.config.setpoint = setpoint;
        }
    }

    /// The output range `(min, max)`.
    pub fn output_range(&self) -> (f64, f64) {
        (self.config.min, self.config.max)
    }

    /// Forgets the integral, the derivative filter and the last measurement.
    pub fn reset(&mut self) {
        self.integral = 0.0;
        self.last_measurement = None;
        self.filtered_rate = 0.0;
        self.filtered_measurement = None;
        self.last = PidTerms {
            output: self.config.bias.clamp(self.config.min, self.config.max),
            ..PidTerms::default()
        };
    }
}

/// Builds a [`PidController`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
#[must_use]
pub struct PidControllerBuilder {
    config: PidConfig,
}

impl PidControllerBuilder {
    /// The value the controller steers the measurement to. Finite; it may be negative (a
    /// temperature), unlike an [`AdmissionController`](super::AdmissionController)'s, whose
    /// signals (a delay, a concurrency) cannot be.
    pub fn setpoint(mut self, setpoint: f64) -> Self {
        self.config.setpoint = setpoint;
        self
    }

    /// The proportional, integral (per second) and derivative (seconds) gains, all finite and
    /// at least 0. Pick the direction with [`action`](Self::action), not with signs.
    pub fn gains(mut self, kp: f64, ki: f64, kd: f64) -> Self {
        self.config.kp = kp;
        self.config.ki = ki;
        self.config.kd = kd;
        self
    }

    /// The output is clamped to `[min, max]`; `min < max`, both finite.
    pub fn output_range(mut self, min: f64, max: f64) -> Self {
        self.config.min = min;
        self.config.max = max;
        self
    }

    /// A constant added to the output (the output with zero error and no integral). Finite.
    pub fn bias(mut self, bias: f64) -> Self {
        self.config.bias = bias;
        self
    }

    /// Which way the output moves when the measurement rises. Default [`Action::Reverse`].
    pub fn action(mut self, action: Action) -> Self {
        self.config.action = action;
        self
    }

    /// How the integral is kept from winding up. Default [`AntiWindup::Clamp`].
    pub fn anti_windup(mut self, anti_windup: AntiWindup) -> Self {
        self.config.anti_windup = anti_windup;
        self
    }

    /// The time constant of the low-pass filter on the derivative; zero means no filter, at
    /// most 1 hour. Default 0.2 s.
    pub fn derivative_filter(mut self, tau: Duration) -> Self {
        self.config.derivative_filter = tau;
        self
    }

    /// The time constant of a first-order low-pass filter on the measurement itself, ahead of
    /// every term (and of the dead band): it averages out the noise of a sampled signal (the
    /// queue of a server under random arrivals moves by several requests between two ticks)
    /// at the cost of that much lag. Zero means no filter; at most 1 hour (a longer one would
    /// freeze the output). Default zero.
    pub fn measurement_filter(mut self, tau: Duration) -> Self {
        self.config.measurement_filter = tau;
        self
    }

    /// Makes the [`measurement_filter`](Self::measurement_filter) adaptive: its time constant
    /// is divided by `1 + (|x − f| / scale)²`, where `x − f` is the new measurement's distance
    /// from the filtered one. A sampled signal's noise (a few tenths of `scale`) is averaged
    /// over nearly the whole time constant, while a shock (several times `scale`) passes within
    /// a tick or two: the controller can leave the moment's noise to a buffer (a queue) and
    /// still react at once to a load step. In the measurement's unit; finite and at least 0;
    /// zero (the default) keeps the time constant fixed.
    pub fn adaptive_filter(mut self, scale: f64) -> Self {
        self.config.filter_scale = scale;
        self
    }

    /// A dead band around the setpoint: measurements from `setpoint − below` to
    /// `setpoint + above` count as no error (the P term is zero and the integral holds still);
    /// outside it the error is measured from the nearer edge. An asymmetric band is a
    /// hysteresis: with `(0, above)` and [`Action::Direct`], the output rises only once the
    /// measurement passes `setpoint + above`, and falls as soon as it is below the setpoint.
    /// Both finite and at least 0. Default `(0, 0)`. The derivative still sees every sample.
    pub fn dead_band(mut self, below: f64, above: f64) -> Self {
        self.config.dead_band = (below, above);
        self
    }

    /// Bounds the error every term sees to `±limit`: the measurement is clamped to
    /// `[setpoint − limit, setpoint + limit]` ahead of the filters, the dead band and the
    /// derivative. A sample far from the setpoint (a queue of 1,000 filling within one tick)
    /// then moves P by at most `kp × limit` and the derivative by what a jump of `limit`
    /// would, instead of slamming the output against a limit where the anti-windup holds the
    /// integral still; the output stays where the integral can learn the level the process
    /// needs. A change of setpoint moves the clamp with it, so a measurement outside the
    /// bound then does kick the derivative. In the measurement's unit; greater than 0 (NaN is
    /// refused); infinity (the default) means no bound.
    pub fn error_limit(mut self, limit: f64) -> Self {
        self.config.error_limit = limit;
        self
    }

    /// Checks the values and builds the controller.
    pub fn build(self) -> Result<PidController, ConfigError> {
        let c = self.config;
        let gain = |field, v: f64| check(field, v, |v| v.is_finite() && *v >= 0.0, "finite, >= 0");
        gain("kp", c.kp)?;
        gain("ki", c.ki)?;
        gain("kd", c.kd)?;
        check("setpoint", c.setpoint, |v| v.is_finite(), "finite")?;
        check("bias", c.bias, |v| v.is_finite(), "finite")?;
        let band = |field, v: f64| check(field, v, |v| v.is_finite() && *v >= 0.0, "finite, >= 0");
        check(
            "adaptive_filter",
            c.filter_scale,
            |v| v.is_finite() && *v >= 0.0,
            "finite, >= 0",
        )?;
        check(
            "error_limit",
            c.error_limit,
            |v| *v > 0.0,
            "> 0 (infinity: no bound)",
        )?;
        band("dead_band.below", c.dead_band.0)?;
        band("dead_band.above", c.dead_band.1)?;
        check("min", c.min, |v| v.is_finite(), "finite")?;
        check("max", c.max, |v| v.is_finite(), "finite")?;
        if c.min >= c.max {
            return Err(ConfigError::new(
                "max",
                (c.min, c.max),
                "greater than min (min < max)",
            ));
        }
        if let AntiWindup::BackCalculation { tracking } = c.anti_windup {
            check(
                "anti_windup.tracking",
                tracking,
                |t| !t.is_zero() && *t <= MAX_TIME_CONSTANT,
                "greater than zero, at most 1 hour",
            )?;
        }
        let time_constant = |field, t: Duration| {
            check(
                field,
                t,
                |t| *t <= MAX_TIME_CONSTANT,
                "at most 1 hour (zero: no filter)",
            )
        };
        time_constant("derivative_filter", c.derivative_filter)?;
        time_constant("measurement_filter", c.measurement_filter)?;
        let mut pid = PidController {
            config: c,
            integral: 0.0,
            last_measurement: None,
            filtered_rate: 0.0,
            filtered_measurement: None,
            last: PidTerms::default(),
        };
        pid.reset();
        Ok(pid)
    }
}

/// The longest time constant a builder accepts: a filter or a tracking time of a year (or
/// `Duration::MAX`) is accepted arithmetic but a dead controller, whose output never moves.
pub(crate) const MAX_TIME_CONSTANT: Duration = Duration::from_secs(3600);

/// `x` with the infinities brought back to the largest finite values: a measurement near
/// `f64::MAX` (a broken signal) overflows a difference or a product to ±∞, and ∞ − ∞ in a later
/// sum is NaN, which no clamp can bring back into the output range.
fn finite(x: f64) -> f64 {
    x.clamp(-f64::MAX, f64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken signal swinging between the largest finite values never makes the output NaN
    /// or leaves its range, with either anti-windup and large gains, and the controller
    /// recovers on normal samples afterwards.
    #[test]
    fn extreme_measurements_saturate_instead_of_making_nan() {
        for anti_windup in [
            AntiWindup::Clamp,
            AntiWindup::BackCalculation {
                tracking: Duration::from_millis(100),
            },
        ] {
            let mut pid = PidController::builder()
                .setpoint(0.05)
                .gains(1e6, 1e6, 1e6)
                .anti_windup(anti_windup)
                .build()
                .unwrap();
            let dt = Duration::from_millis(100);
            for m in [
                f64::MAX,
                -f64::MAX,
                f64::MAX,
                1e300,
                -1e300,
                f64::MIN_POSITIVE,
            ] {
                let out = pid.update(m, dt);
                assert!((0.0..=1.0).contains(&out), "{anti_windup:?} {m}: {out}");
            }
            let t = pid.terms();
            assert!(
                t.p.is_finite() && t.i.is_finite() && t.d.is_finite(),
                "{t:?}"
            );
            let mut out = f64::NAN;
            for _ in 0..50 {
                out = pid.update(0.05, dt);
            }
            assert!(out.is_finite(), "{anti_windup:?}: {out}");
        }
    }

    const DT: Duration = Duration::from_millis(10);

    /// A first-order plant y' = (K·u − y) / T, simulated in steps of DT.
    fn run(pid: &mut PidController, steps: usize, gain: f64, tau: f64, y0: f64) -> Vec<f64> {
        let mut y = y0;
        let mut ys = Vec::with_capacity(steps);
        for _ in 0..steps {
            let u = pid.update(y, DT);
            y += (gain * u - y) / tau * DT.as_secs_f64();
            ys.push(y);
        }
        ys
    }

    fn pid(kp: f64, ki: f64, kd: f64) -> PidController {
        PidController::builder()
            .setpoint(1.0)
            .gains(kp, ki, kd)
            .output_range(-100.0, 100.0)
            .build()
            .unwrap()
    }

    #[test]
    fn p_only_leaves_the_textbook_steady_state_error() {
        // Unit plant, kp = 4: y settles at kp/(1+kp) = 0.8 of the setpoint.
        let mut c = pid(4.0, 0.0, 0.0);
        let ys = run(&mut c, 2000, 1.0, 0.5, 0.0);
        let y = *ys.last().unwrap();
        assert!((y - 0.8).abs() < 1e-6, "y = {y}");
    }

    #[test]
    fn pi_removes_the_steady_state_error() {
        let mut c = pid(4.0, 8.0, 0.0);
        let ys = run(&mut c, 2000, 1.0, 0.5, 0.0);
        let y = *ys.last().unwrap();
        assert!((y - 1.0).abs() < 1e-4, "y = {y}");
        // And the integral holds exactly what the plant needs: u = y/K = 1 with error 0.
        assert!((c.terms().i - 1.0).abs() < 1e-3, "{:?}", c.terms());
    }

    #[test]
    fn derivative_does_not_kick_on_a_setpoint_step() {
        let mut c = pid(1.0, 0.0, 5.0);
        for _ in 0..10 {
            c.update(0.0, DT);
        }
        c.set_setpoint(10.0);
        c.update(0.0, DT);
        let t = c.terms();
        assert_eq!(t.d, 0.0, "measurement did not move, so no D: {t:?}");
        assert_eq!(t.p, 10.0);
        // A moving measurement does give a D term, opposing the movement.
        c.update(1.0, DT);
        assert!(c.terms().d < 0.0, "{:?}", c.terms());
    }

    #[test]
    fn derivative_filter_smooths_a_single_spike() {
        let unfiltered = {
            let mut c = PidController::builder()
                .gains(0.0, 0.0, 1.0)
                .output_range(-1e9, 1e9)
                .derivative_filter(Duration::ZERO)
                .build()
                .unwrap();
            c.update(0.0, DT);
            c.update(1.0, DT);
            c.terms().d.abs()
        };
        let filtered = {
            let mut c = PidController::builder()
                .gains(0.0, 0.0, 1.0)
                .output_range(-1e9, 1e9)
                .derivative_filter(Duration::from_millis(90))
                .build()
                .unwrap();
            c.update(0.0, DT);
            c.update(1.0, DT);
            c.terms().d.abs()
        };
        assert!((unfiltered - 100.0).abs() < 1e-9, "{unfiltered}");
        assert!((filtered - 10.0).abs() < 1e-9, "alpha = 0.1: {filtered}");
    }

    #[test]
    fn clamp_anti_windup_lets_go_at_once_when_the_error_reverses() {
        // Output range [0, 1]; an unreachable setpoint pins the output at 1 for a long time.
        let mut c = PidController::builder()
            .setpoint(5.0)
            .gains(0.1, 1.0, 0.0)
            .build()
            .unwrap();
        for _ in 0..10_000 {
            c.update(0.0, DT);
        }
        assert_eq!(c.output(), 1.0);
        assert!(
            c.terms().i <= 1.0 + 1e-9,
            "integral bounded: {:?}",
            c.terms()
        );
        // Now the measurement overshoots: the output must leave the limit within a second.
        let mut steps = 0;
        while c.update(6.0, DT) >= 1.0 {
            steps += 1;
            assert!(steps < 100, "wound up: {:?}", c.terms());
        }
    }

    #[test]
    fn back_calculation_tracks_the_limit() {
        let mut c = PidController::builder()
            .setpoint(5.0)
            .gains(0.1, 1.0, 0.0)
            .anti_windup(AntiWindup::BackCalculation {
                tracking: Duration::from_millis(100),
            })
            .build()
            .unwrap();
        for _ in 0..10_000 {
            c.update(0.0, DT);
        }
        // At equilibrium the integral's step ki·e·dt = 0.05 is taken back by
        // (1 − (p + i + 0.05))/Tt·dt: i = 0.95, instead of growing without bound.
        let i = c.terms().i;
        assert!((i - 0.95).abs() < 1e-6, "i = {i}");
        let unbounded = 0.5 + 10_000.0 * 0.01 * 5.0;
        assert!(i < unbounded / 100.0);
    }

    #[test]
    fn updates_scale_with_dt() {
        // The same constant error over the same total time gives the same integral, whatever
        // the tick.
        let mut fine = pid(0.0, 1.0, 0.0);
        let mut coarse = pid(0.0, 1.0, 0.0);
        for _ in 0..100 {
            fine.update(0.5, Duration::from_millis(10));
        }
        for _ in 0..10 {
            coarse.update(0.5, Duration::from_millis(100));
        }
        assert!((fine.terms().i - coarse.terms().i).abs() < 1e-9);
        assert!((fine.terms().i - 0.5).abs() < 1e-9);
        // dt = 0 changes nothing.
        let before = fine.terms();
        fine.update(100.0, Duration::ZERO);
        assert_eq!(fine.terms(), before);
    }

    #[test]
    fn direct_action_raises_the_output_with_the_measurement() {
        let mut c = PidController::builder()
            .setpoint(0.05)
            .gains(2.0, 0.0, 0.0)
            .action(Action::Direct)
            .build()
            .unwrap();
        assert!((c.update(0.30, DT) - 0.5).abs() < 1e-9);
        assert_eq!(c.update(0.0, DT), 0.0);
    }

    #[test]
    fn a_dead_band_above_the_setpoint_is_a_hysteresis() {
        let mut c = PidController::builder()
            .setpoint(1.0)
            .gains(2.0, 1.0, 0.0)
            .action(Action::Direct)
            .output_range(-10.0, 10.0)
            .dead_band(0.0, 0.5)
            .build()
            .unwrap();
        let dt = Duration::from_secs(1);
        // Inside the band: no error, no output, and the integral holds still.
        assert_eq!(c.update(1.4, dt), 0.0);
        assert_eq!(c.terms().error, 0.0);
        // Above it, the error counts from the band's edge: 2.0 − 1.5.
        c.update(2.0, dt);
        let t = c.terms();
        assert!(
            (t.error - 0.5).abs() < 1e-12 && (t.p - 1.0).abs() < 1e-12,
            "{t:?}"
        );
        assert!((t.i - 0.5).abs() < 1e-12, "{t:?}");
        // Back in the band: the integral keeps what it had, so the output holds.
        c.update(1.2, dt);
        assert!((c.terms().i - 0.5).abs() < 1e-12 && (c.output() - 0.5).abs() < 1e-12);
        // Below the setpoint the error counts at once, from the setpoint: 0.8 − 1.0.
        c.update(0.8, dt);
        let t = c.terms();
        assert!(
            (t.error + 0.2).abs() < 1e-12 && (t.i - 0.3).abs() < 1e-12,
            "{t:?}"
        );
    }

    #[test]
    fn tracking_pulls_the_integral_toward_what_the_actuator_applied() {
        let mut c = PidController::builder()
            .setpoint(0.0)
            .gains(0.0, 1.0, 0.0)
            .action(Action::Direct)
            .build()
            .unwrap();
        let dt = Duration::from_secs(1);
        c.update(0.6, dt);
        assert!((c.output() - 0.6).abs() < 1e-12);
        // The actuator applied 0.2: a quarter of the gap (dt / tracking) comes off the integral
        // (seen at the next update, with no error).
        c.track(0.2, dt, Duration::from_secs(4));
        c.update(0.0, dt);
        assert!((c.terms().i - 0.5).abs() < 1e-12, "{:?}", c.terms());
        // Never past what was applied, however long dt is.
        c.track(0.2, Duration::from_secs(100), Duration::from_secs(4));
        c.update(0.0, dt);
        assert!((c.terms().i - 0.2).abs() < 1e-12, "{:?}", c.terms());
    }

    #[test]
    fn the_measurement_filter_smooths_p_and_i_but_not_d() {
        let mut c = PidController::builder()
            .gains(1.0, 0.0, 1.0)
            .output_range(-1e9, 1e9)
            .derivative_filter(Duration::ZERO)
            .measurement_filter(Duration::from_millis(90))
            .build()
            .unwrap();
        c.update(0.0, DT);
        c.update(1.0, DT);
        let t = c.terms();
        // alpha = 0.01 / (0.09 + 0.01): P sees a tenth of the step, D all of it.
        assert!((t.p + 0.1).abs() < 1e-12, "{t:?}");
        assert!((t.d + 100.0).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn the_adaptive_filter_averages_small_jumps_and_passes_large_ones() {
        let filtered = |step: f64| {
            let mut c = PidController::builder()
                .gains(1.0, 0.0, 0.0)
                .output_range(-1e9, 1e9)
                .measurement_filter(Duration::from_millis(90))
                .adaptive_filter(1.0)
                .build()
                .unwrap();
            c.update(0.0, DT);
            c.update(step, DT);
            -c.terms().p / step
        };
        // A jump of 0.1 × scale: tau = 0.09 / 1.01, alpha = 0.01 / (tau + 0.01) ≈ 0.1.
        let tau = 0.09 / 1.01;
        assert!((filtered(0.1) - 0.01 / (tau + 0.01)).abs() < 1e-12);
        // A jump of 3 × scale: tau = 0.09 / 10 = 0.009, alpha = 0.01 / 0.019 ≈ 0.53.
        assert!((filtered(3.0) - 0.01 / 0.019).abs() < 1e-12);
        assert!(filtered(3.0) > 5.0 * filtered(0.1));
    }

    /// A shedder on queue delay as the admission controller builds it (20 ms setpoint, default
    /// gains, 100 ms ticks), optionally with an error limit.
    fn shedder(limit: f64) -> PidController {
        PidController::builder()
            .setpoint(0.020)
            .gains(2.0, 20.0, 0.2)
            .output_range(0.0, 0.95)
            .action(Action::Direct)
            .error_limit(limit)
            .build()
            .unwrap()
    }

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn an_error_limit_bounds_what_one_burst_sample_does() {
        // The queue's expected wait jumps from 0 to 500 ms (25 setpoints) within one tick.
        let mut free = shedder(f64::INFINITY);
        free.update(0.0, TICK);
        assert_eq!(free.update(0.5, TICK), 0.95, "slammed: {:?}", free.terms());
        let mut bounded = shedder(0.060);
        bounded.update(0.0, TICK);
        let out = bounded.update(0.5, TICK);
        let t = bounded.terms();
        // The error is the limit, 60 ms: P = 2 × 0.06; the integral (held at 0 by the first
        // sample, below the setpoint at the lower limit) takes 20 × 0.06 × 0.1; the derivative
        // sees a jump of 80 ms in 100 ms through its 200 ms filter (alpha 1/3): 0.2 × 0.8 / 3.
        assert!((t.error - 0.06).abs() < 1e-12, "{t:?}");
        assert!((t.p - 0.12).abs() < 1e-12, "{t:?}");
        assert!((t.i - 0.12).abs() < 1e-12, "{t:?}");
        assert!((t.d - 0.2 * 0.8 / 3.0).abs() < 1e-12, "{t:?}");
        assert!((out - (0.24 + 0.2 * 0.8 / 3.0)).abs() < 1e-12, "{out}");
    }

    #[test]
    fn with_an_error_limit_a_long_queue_leaves_the_output_to_the_integral() {
        // The failure mode seen over HTTP with a long line: the signal sits at 25 setpoints.
        // Unbounded, P pins the output at its cap from the first tick, and the anti-windup
        // holds the integral where it was (0): when the queue drains, nothing holds the shed.
        let mut free = shedder(f64::INFINITY);
        for _ in 0..5 {
            free.update(0.5, TICK);
        }
        assert_eq!(free.output(), 0.95);
        assert_eq!(free.terms().i, 0.0, "{:?}", free.terms());
        // Bounded at 3 setpoints, the output stays inside while the integral climbs 0.12 a
        // tick toward the shed the process needs; it reaches the cap only once the integral
        // itself is most of it.
        let mut bounded = shedder(0.060);
        let mut outputs = Vec::new();
        for _ in 0..5 {
            outputs.push(bounded.update(0.5, TICK));
        }
        let i = bounded.terms().i;
        assert!((i - 0.6).abs() < 1e-9, "i = {i}");
        assert!(outputs[..4].iter().all(|&o| o < 0.95), "{outputs:?}");
        // The queue drains: the integral carries the shed, the output does not drop to 0.
        let drained = bounded.update(0.0, TICK);
        assert!(drained > 0.4, "{drained}, {:?}", bounded.terms());
        assert_eq!(free.update(0.0, TICK), 0.0, "{:?}", free.terms());
    }

    #[test]
    fn clamp_integrates_while_that_moves_the_output_back_inside() {
        // Integral range [-0.5, 0.5] around the bias; the derivative alone (unfiltered) pins
        // the output, so the integral's own moves are visible.
        let mut c = PidController::builder()
            .setpoint(0.2)
            .gains(0.0, 1.0, 2.0)
            .bias(0.5)
            .action(Action::Direct)
            .derivative_filter(Duration::ZERO)
            .build()
            .unwrap();
        c.update(0.0, TICK);
        assert!((c.terms().i + 0.02).abs() < 1e-12, "{:?}", c.terms());
        // Rising fast, still below the setpoint: D pins the output at 1, and the negative error
        // keeps integrating (down, the way that brings the output back inside).
        assert_eq!(c.update(0.15, TICK), 1.0);
        assert!((c.terms().i + 0.025).abs() < 1e-12, "{:?}", c.terms());
        // Rising above the setpoint: integrating would push further past 1, so it holds.
        assert_eq!(c.update(0.4, TICK), 1.0);
        assert!((c.terms().i + 0.025).abs() < 1e-12, "{:?}", c.terms());
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let b = PidController::builder;
        let field = |r: Result<PidController, ConfigError>| r.unwrap_err().field();
        assert_eq!(field(b().gains(-1.0, 0.0, 0.0).build()), "kp");
        assert_eq!(field(b().gains(1.0, f64::NAN, 0.0).build()), "ki");
        assert_eq!(field(b().gains(1.0, 0.0, f64::INFINITY).build()), "kd");
        assert_eq!(field(b().output_range(1.0, 1.0).build()), "max");
        assert_eq!(field(b().output_range(2.0, 1.0).build()), "max");
        assert_eq!(field(b().output_range(f64::NAN, 1.0).build()), "min");
        assert_eq!(field(b().setpoint(f64::NAN).build()), "setpoint");
        assert_eq!(field(b().adaptive_filter(-1.0).build()), "adaptive_filter");
        assert_eq!(
            field(b().adaptive_filter(f64::NAN).build()),
            "adaptive_filter"
        );
        assert_eq!(field(b().error_limit(0.0).build()), "error_limit");
        assert_eq!(field(b().error_limit(-1.0).build()), "error_limit");
        assert_eq!(field(b().error_limit(f64::NAN).build()), "error_limit");
        assert!(b().error_limit(f64::INFINITY).build().is_ok());
        assert_eq!(field(b().dead_band(-0.1, 0.0).build()), "dead_band.below");
        assert_eq!(
            field(b().dead_band(0.0, f64::NAN).build()),
            "dead_band.above"
        );
        let tracking = AntiWindup::BackCalculation {
            tracking: Duration::ZERO,
        };
        assert_eq!(
            field(b().anti_windup(tracking).build()),
            "anti_windup.tracking"
        );
    }
}
