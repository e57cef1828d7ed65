//! The adaptive rate: the AWS SDKs' adaptive retry mode, as pure arithmetic on timestamps.
//!
//! The controller sees every response: it measures the send rate (responses counted in 0.5 s
//! buckets, smoothed with 0.8), cuts the rate to β × the measured rate at a congestion event,
//! and in between grows it along the CUBIC curve `C (t − K)³ + Wmax`, where `Wmax` is the rate
//! at the last cut and `K = ∛(Wmax (1 − β) / C)` is when the curve gets back to it. A new rate is
//! never above twice the measured rate, so an idle client cannot bank a huge rate.
//!
//! One cut per congestion event, as TCP (and CUBIC) cut once per round trip: a throttle answer to
//! a request sent before the last cut was sent at the old rate, so it reports the congestion the
//! cut already answered and does not cut again. The AWS SDKs cut at every throttle answer; with
//! hundreds of requests in flight when a server starts refusing, that compounds to 0.7ⁿ and
//! drives the rate to its floor, from where CUBIC needs many seconds to climb back.

use crate::error::{ConfigError, check};

/// The settings of the adaptive rate, with the AWS SDK defaults.
///
/// ```
/// use backstop::token_bucket::AdaptiveRate;
///
/// let adaptive = AdaptiveRate::aws().max_rate(500.0).build()?;
/// assert_eq!(adaptive.beta_value(), 0.7);
/// # Ok::<_, backstop::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveRate {
    beta: f64,
    scale: f64,
    smoothing: f64,
    measure_window: f64,
    min_rate: f64,
    max_rate: f64,
    initial_rate: Option<f64>,
}

impl AdaptiveRate {
    /// The AWS SDK adaptive-mode constants: β = 0.7, scale C = 0.4, smoothing 0.8 over 0.5 s
    /// buckets, at least 0.5 requests/s, no maximum, unlimited until the first throttle.
    pub fn aws() -> AdaptiveRateBuilder {
        AdaptiveRateBuilder(AdaptiveRate {
            beta: 0.7,
            scale: 0.4,
            smoothing: 0.8,
            measure_window: 0.5,
            min_rate: 0.5,
            max_rate: f64::INFINITY,
            initial_rate: None,
        })
    }

    /// The multiplicative cut at a throttle.
    pub fn beta_value(&self) -> f64 {
        self.beta
    }

    /// The CUBIC scale constant C.
    pub fn scale_value(&self) -> f64 {
        self.scale
    }

    /// The lowest rate, in requests per second.
    pub fn min_rate_value(&self) -> f64 {
        self.min_rate
    }

    /// The highest rate, in requests per second.
    pub fn max_rate_value(&self) -> f64 {
        self.max_rate
    }

    /// The rate from the start, if one was configured (else unlimited until the first throttle).
    pub fn initial_rate_value(&self) -> Option<f64> {
        self.initial_rate
    }
}

impl Default for AdaptiveRate {
    fn default() -> Self {
        AdaptiveRate::aws().0
    }
}

/// Builds an [`AdaptiveRate`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveRateBuilder(AdaptiveRate);

impl AdaptiveRateBuilder {
    /// The multiplicative cut at a throttle, in (0, 1). Default 0.7.
    pub fn beta(mut self, beta: f64) -> Self {
        self.0.beta = beta;
        self
    }

    /// The CUBIC scale constant C, greater than 0: how fast the rate climbs back. Default 0.4.
    pub fn scale(mut self, scale: f64) -> Self {
        self.0.scale = scale;
        self
    }

    /// The weight of the newest measurement in the smoothed send rate, in (0, 1]. Default 0.8.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.0.smoothing = smoothing;
        self
    }

    /// The width of a send-rate measurement bucket, in seconds, in (0, 60]. Default 0.5.
    pub fn measure_window(mut self, seconds: f64) -> Self {
        self.0.measure_window = seconds;
        self
    }

    /// The lowest rate, requests per second, greater than 0. Default 0.5.
    pub fn min_rate(mut self, rate: f64) -> Self {
        self.0.min_rate = rate;
        self
    }

    /// The highest rate, requests per second (infinite allowed), at least `min_rate`. Default
    /// no maximum.
    pub fn max_rate(mut self, rate: f64) -> Self {
        self.0.max_rate = rate;
        self
    }

    /// Starts limited at `rate` requests per second instead of unlimited until the first
    /// throttle. Between `min_rate` and `max_rate`.
    pub fn initial_rate(mut self, rate: f64) -> Self {
        self.0.initial_rate = Some(rate);
        self
    }

    /// Checks every value.
    pub fn build(self) -> Result<AdaptiveRate, ConfigError> {
        let a = self.0;
        check("beta", a.beta, |b| *b > 0.0 && *b < 1.0, "in (0, 1)")?;
        check(
            "scale",
            a.scale,
            |c| c.is_finite() && *c > 0.0,
            "finite and greater than 0",
        )?;
        check(
            "smoothing",
            a.smoothing,
            |s| *s > 0.0 && *s <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "measure_window",
            a.measure_window,
            |w| *w > 0.0 && *w <= 60.0,
            "in (0, 60] seconds",
        )?;
        check(
            "min_rate",
            a.min_rate,
            |r| *r > 0.0 && *r <= super::bucket::MAX_RATE,
            "in (0, 1e9] per second",
        )?;
        check(
            "max_rate",
            a.max_rate,
            |r| *r >= a.min_rate,
            "at least min_rate (infinite allowed)",
        )?;
        if let Some(r) = a.initial_rate {
            check(
                "initial_rate",
                r,
                |r| *r >= a.min_rate && *r <= a.max_rate && *r <= super::bucket::MAX_RATE,
                "between min_rate and max_rate",
            )?;
        }
        Ok(a)
    }
}

/// `K = ∛(Wmax (1 − β) / C)`: how long the CUBIC curve takes to climb back from β × Wmax to Wmax.
///
/// ```
/// assert_eq!(backstop::token_bucket::cubic_k(10.0, 0.7, 0.4), 1.9574338205844317);
/// ```
pub fn cubic_k(w_max: f64, beta: f64, scale: f64) -> f64 {
    // powf(1/3), as the SDKs compute it (cbrt differs in the last digit).
    (w_max * (1.0 - beta) / scale).powf(1.0 / 3.0)
}

/// Responses counted in the first window before their rate is an estimate to cut from.
const MIN_RESPONSES_TO_ESTIMATE: u64 = 4;

/// The controller's state; lives under a short lock in the bucket, touched once per response.
#[derive(Debug)]
pub(crate) struct Controller {
    cfg: AdaptiveRate,
    /// False while unlimited (before the first throttle).
    enabled: bool,
    measured: f64,
    /// Whether one measurement bucket has closed since the start.
    measured_once: bool,
    /// Whether any response has been counted; the first window starts at the first one.
    counting: bool,
    last_bucket: f64,
    count: u64,
    w_max: f64,
    k: f64,
    /// Where the CUBIC curve starts: the last cut (earlier, with an initial rate).
    last_throttle: f64,
    /// When the rate was last cut; throttles of requests sent before it are not cut for again.
    last_cut: f64,
    /// A throttle arrived before there was any send rate to cut from: the cut waits for one.
    pending_cut: bool,
}

impl Controller {
    pub(crate) fn new(cfg: AdaptiveRate, now: f64) -> Self {
        let mut c = Controller {
            cfg,
            enabled: false,
            measured: 0.0,
            measured_once: false,
            counting: false,
            // Set by the first response, which opens the first window.
            last_bucket: now,
            count: 0,
            w_max: 0.0,
            k: 0.0,
            last_throttle: now,
            last_cut: f64::NEG_INFINITY,
            pending_cut: false,
        };
        if let Some(rate) = cfg.initial_rate {
            // Start on the plateau of the curve at the configured rate, not at its bottom.
            c.enabled = true;
            c.w_max = rate;
            c.k = cubic_k(rate, cfg.beta, cfg.scale);
            c.last_throttle = now - c.k;
        }
        c
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The smoothed send rate, requests per second.
    pub(crate) fn measured_rate(&self) -> f64 {
        self.measured
    }

    /// The send rate to cut from, once there is one. Until the first measurement bucket closes
    /// the smoothed rate is still 0; the open bucket's count over its elapsed time is then the
    /// estimate, once it has counted a few responses (a server that refuses within the first
    /// half second would otherwise cut to the floor). `None` before that: a throttle among the
    /// very first responses, which carry no rate at all, defers its cut until they do (the
    /// AWS SDKs cut from 0 there, to the 0.5/s floor, and a client that starts against a full
    /// server then refuses nearly everything itself).
    fn rate_estimate(&self, now: f64) -> Option<f64> {
        if self.measured_once {
            return Some(self.measured);
        }
        let elapsed = now - self.last_bucket;
        (self.count >= MIN_RESPONSES_TO_ESTIMATE && elapsed > 0.0)
            .then(|| self.count as f64 / elapsed)
    }

    fn measure(&mut self, now: f64) {
        let w = self.cfg.measure_window;
        if !self.counting {
            // The first window opens at the first response, not when the bucket was built: a
            // client that starts sending later would otherwise measure idle time as a low rate.
            // It opens the window as the first of a row of fence posts: the gaps after it are
            // what the window counts.
            self.counting = true;
            self.last_bucket = now;
            return;
        }
        let bucket = (now / w).floor() * w;
        self.count += 1;
        // A first window shorter than half a window waits for the next boundary: one response
        // over a millisecond is not a rate.
        if bucket - self.last_bucket >= w / 2.0 {
            let current = self.count as f64 / (bucket - self.last_bucket);
            // The first measurement is taken whole; the AWS SDKs blend it with 0, which reads
            // a client's first half second at 0.8 of its real rate and cuts from there.
            let s = if self.measured_once {
                self.cfg.smoothing
            } else {
                1.0
            };
            self.measured = current * s + self.measured * (1.0 - s);
            self.count = 0;
            self.last_bucket = bucket;
            self.measured_once = true;
        }
    }

    /// Records one response at `now` to a request sent at `sent_at` (seconds); `fill_rate` is
    /// the bucket's rate now (`None` while unlimited). Returns the new rate, or `None` while
    /// still unlimited. A throttle of a request sent before the last cut belongs to the
    /// congestion event that cut answered: it counts in the measured rate, and the rate follows
    /// the curve as for any other answer.
    pub(crate) fn on_response(
        &mut self,
        now: f64,
        sent_at: f64,
        throttled: bool,
        fill_rate: Option<f64>,
    ) -> Option<f64> {
        self.measure(now);
        let cut = (throttled && sent_at >= self.last_cut) || self.pending_cut;
        let estimate = if cut { self.rate_estimate(now) } else { None };
        if cut && estimate.is_none() {
            self.pending_cut = true;
        }
        let rate = if let Some(measured) = estimate {
            self.pending_cut = false;
            let base = match (self.enabled, fill_rate) {
                (true, Some(fill)) => measured.min(fill),
                _ => measured,
            };
            self.w_max = base;
            self.k = cubic_k(base, self.cfg.beta, self.cfg.scale);
            self.last_throttle = now;
            self.last_cut = now;
            self.enabled = true;
            base * self.cfg.beta
        } else if self.enabled {
            let dt = now - self.last_throttle;
            self.cfg.scale * (dt - self.k).powi(3) + self.w_max
        } else {
            return None;
        };
        // Never more than twice what the client actually sends (once that has been measured).
        let rate = if self.measured_once {
            rate.min(2.0 * self.measured)
        } else {
            rate
        };
        Some(rate.clamp(self.cfg.min_rate, self.cfg.max_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_for_wmax_10_is_the_published_constant() {
        assert_eq!(cubic_k(10.0, 0.7, 0.4), 1.9574338205844317);
    }

    #[test]
    fn a_throttle_among_the_first_responses_waits_for_a_rate_instead_of_cutting_to_the_floor() {
        let cfg = AdaptiveRate::aws().build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        // A server full from the start: every answer is a throttle, 100 a second.
        let mut rates = Vec::new();
        for i in 1..=6 {
            let now = i as f64 * 0.01;
            rates.push(c.on_response(now, now - 0.005, true, None));
        }
        // The first four answers carry no rate: the client stays unlimited meanwhile.
        assert_eq!(&rates[..4], &[None, None, None, None]);
        // The fifth: 4 gaps over 40 ms is 100/s, cut to 0.7 of it (not to the 0.5/s floor).
        let cut = rates[4].expect("cut");
        assert!((cut - 70.0).abs() < 1e-6, "cut to {cut}");
        // The sixth was sent before that cut: no second cut, the rate follows the curve.
        assert!(rates[5].expect("limited") >= cut - 1e-9);
    }

    #[test]
    fn with_an_initial_rate_an_early_throttle_also_waits_for_a_measured_rate() {
        let cfg = AdaptiveRate::aws().initial_rate(50.0).build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        let first = c
            .on_response(0.001, 0.0, true, Some(50.0))
            .expect("limited from the start");
        assert!(first > 40.0, "not cut from a rate of 0: {first}");
    }

    #[test]
    fn the_first_window_starts_at_the_first_response_and_counts_whole() {
        let cfg = AdaptiveRate::aws().build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        // Idle for 2.1 s, then 20/s: the first closed window (2.1 s to 2.5 s, 8 responses)
        // reads 20/s, not 0.8 × 20 and not diluted by the idle time.
        let mut ms = 2100;
        while c.measured_rate() == 0.0 {
            let t = f64::from(ms) / 1000.0;
            c.on_response(t, t, false, None);
            ms += 50;
        }
        let m = c.measured_rate();
        assert!((m - 20.0).abs() < 1e-9, "measured {m} at {ms} ms");
        // A first response just before a boundary waits for the next one.
        let mut c = Controller::new(cfg, 0.0);
        c.on_response(0.499, 0.499, false, None);
        c.on_response(0.501, 0.501, false, None);
        assert_eq!(c.measured_rate(), 0.0);
    }

    #[test]
    fn throttle_cuts_to_beta_of_measured_then_cubic_climbs_back() {
        let cfg = AdaptiveRate::aws().build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        // 10 responses per 0.5 s bucket for 5 s: measured converges to 20/s.
        let mut t = 0.0;
        while t < 5.0 {
            assert_eq!(c.on_response(t, t, false, None), None);
            t += 0.05;
        }
        let m = c.measured_rate();
        assert!((m - 20.0).abs() < 0.5, "measured {m}");
        let cut = c.on_response(5.0, 5.0, true, None).unwrap();
        let expected = c.measured_rate() * 0.7;
        assert!((cut - expected).abs() < 1e-9);
        // Keep sending 20/s; at t = K after the throttle the curve is back at Wmax.
        let k = cubic_k(c.w_max, 0.7, 0.4);
        let mut t = 5.05;
        let mut rate = cut;
        while t < 5.0 + k {
            rate = c.on_response(t, t, false, Some(rate)).unwrap();
            assert!(rate <= c.w_max + 1e-9, "below Wmax before K");
            t += 0.05;
        }
        let back = c.on_response(5.0 + k, 5.0 + k, false, Some(rate)).unwrap();
        assert!(
            (back - c.w_max).abs() < 1e-6,
            "back {back} wmax {}",
            c.w_max
        );
    }

    #[test]
    fn throttles_sent_before_the_last_cut_do_not_cut_again() {
        let cfg = AdaptiveRate::aws().build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        let mut t = 0.0;
        while t < 5.0 {
            c.on_response(t, t - 0.2, false, None);
            t += 0.01; // 100/s, each answered 200 ms after it was sent
        }
        let first = c.on_response(5.0, 4.8, true, None).unwrap();
        // The rest of the round trip's answers were sent before that cut: no further cut.
        for i in 1..20 {
            let t = 5.0 + f64::from(i) * 0.01;
            let rate = c.on_response(t, t - 0.2, true, Some(first)).unwrap();
            assert!(
                rate >= first - 1e-9,
                "cut again to {rate} (first cut {first})"
            );
        }
        // A request sent after the cut is a new congestion event.
        let fill = c.on_response(5.25, 5.05, false, Some(first)).unwrap();
        let second = c.on_response(5.3, 5.1, true, Some(fill)).unwrap();
        let expected = 0.7 * fill.min(c.measured_rate());
        assert!(second < first, "second cut {second}, first {first}");
        assert!((second - expected).abs() < 1e-9, "{second} {expected}");
    }

    #[test]
    fn a_throttle_in_the_first_half_second_cuts_from_the_rate_so_far() {
        let cfg = AdaptiveRate::aws().build().unwrap();
        let mut c = Controller::new(cfg, 0.0);
        for i in 0..30 {
            c.on_response(f64::from(i) * 0.01, 0.0, false, None); // 100/s for 0.3 s
        }
        let cut = c.on_response(0.3, 0.1, true, None).unwrap();
        // 31 answers 10 ms apart, the first opening the count: 100/s, cut to 0.7 of it, not
        // to the 0.5/s floor.
        assert!((cut - 70.0).abs() < 1e-9, "{cut}");
    }

    #[test]
    fn rate_is_clamped_to_min_and_max() {
        let cfg = AdaptiveRate::aws()
            .min_rate(2.0)
            .max_rate(3.0)
            .build()
            .unwrap();
        let mut c = Controller::new(cfg, 0.0);
        // A first answer carries no rate: the cut waits for one (1/s here), then the floor.
        assert_eq!(c.on_response(0.0, 0.0, true, None), None);
        assert_eq!(c.on_response(1.0, 1.0, true, None), Some(2.0)); // 0.7 x 1/s: the floor
        let mut c = Controller::new(cfg, 0.0);
        let mut t = 0.0;
        while t < 5.0 {
            c.on_response(t, t, false, None);
            t += 0.02; // 50/s
        }
        assert_eq!(c.on_response(5.0, 5.0, true, None), Some(3.0)); // 0.7 x 50: the cap
    }

    #[test]
    fn builder_names_bad_fields() {
        assert_eq!(
            AdaptiveRate::aws().beta(1.0).build().unwrap_err().field(),
            "beta"
        );
        assert_eq!(
            AdaptiveRate::aws()
                .min_rate(5.0)
                .max_rate(1.0)
                .build()
                .unwrap_err()
                .field(),
            "max_rate"
        );
        assert_eq!(
            AdaptiveRate::aws()
                .initial_rate(0.1)
                .build()
                .unwrap_err()
                .field(),
            "initial_rate"
        );
    }
}
