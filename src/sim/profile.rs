//! Offered load over time: piecewise steps and ramps, constant or Poisson arrivals.

use std::time::Duration;

use rand::Rng;
use rand::RngExt;

use crate::error::{ConfigError, check};

/// How arrivals are spaced at a given rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// Evenly spaced: one every `1 / rate` seconds.
    Constant,
    /// A Poisson process: exponentially distributed gaps with mean `1 / rate`.
    #[default]
    Poisson,
}

/// One piece of a [`LoadProfile`]: the rate goes linearly from `from_rps` to `to_rps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// How long the piece lasts.
    pub duration: Duration,
    /// Logical requests per second at its start.
    pub from_rps: f64,
    /// Logical requests per second at its end.
    pub to_rps: f64,
}

/// Demand over time, in new logical requests per second, built from steps and ramps.
///
/// ```
/// use backstop::sim::LoadProfile;
/// use std::time::Duration;
///
/// let s = Duration::from_secs;
/// let profile = LoadProfile::new()
///     .step(s(10), 50.0)        // warm up
///     .ramp(s(5), 50.0, 200.0)  // rising demand
///     .step(s(30), 200.0)       // the surge
///     .step(s(30), 50.0);       // back to normal
/// assert_eq!(profile.duration(), s(75));
/// assert_eq!(profile.rate_at(Duration::from_millis(12_500)), 125.0);
/// assert_eq!(profile.peak(), Some((s(15), s(45))));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadProfile {
    segments: Vec<Segment>,
}

impl LoadProfile {
    /// An empty profile.
    pub fn new() -> Self {
        LoadProfile::default()
    }

    /// A constant rate for `duration`.
    pub fn step(self, duration: Duration, rps: f64) -> Self {
        self.ramp(duration, rps, rps)
    }

    /// A linear change from `from_rps` to `to_rps` over `duration`.
    pub fn ramp(mut self, duration: Duration, from_rps: f64, to_rps: f64) -> Self {
        self.segments.push(Segment {
            duration,
            from_rps,
            to_rps,
        });
        self
    }

    /// The pieces, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The total length.
    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The rate at time `t` from the start (0 after the end).
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut start = Duration::ZERO;
        for seg in &self.segments {
            let end = start + seg.duration;
            if t < end {
                let x = (t - start).as_secs_f64() / seg.duration.as_secs_f64();
                return seg.from_rps + (seg.to_rps - seg.from_rps) * x;
            }
            start = end;
        }
        0.0
    }

    /// The expected number of arrivals in `[from, to)`.
    pub fn expected_arrivals(&self, from: Duration, to: Duration) -> f64 {
        let mut start = Duration::ZERO;
        let mut total = 0.0;
        for seg in &self.segments {
            let end = start + seg.duration;
            let a = from.max(start);
            let b = to.min(end);
            if a < b {
                let mid = a + (b - a) / 2;
                total += self.rate_at(mid) * (b - a).as_secs_f64();
            }
            start = end;
        }
        total
    }

    /// The window of the highest-rate stretch: the first run of consecutive segments that stay
    /// at the peak rate from start to end (ramps towards it are not part of it). `None` when
    /// empty.
    pub fn peak(&self) -> Option<(Duration, Duration)> {
        let peak = self
            .segments
            .iter()
            .map(|s| s.from_rps.min(s.to_rps))
            .fold(f64::NEG_INFINITY, f64::max);
        let mut start = Duration::ZERO;
        let mut window: Option<(Duration, Duration)> = None;
        for seg in &self.segments {
            let end = start + seg.duration;
            let at_peak = seg.from_rps.min(seg.to_rps) >= peak;
            match (&mut window, at_peak) {
                (None, true) => window = Some((start, end)),
                (Some((_, e)), true) if *e == start => *e = end,
                (Some(_), false) => break,
                _ => {}
            }
            start = end;
        }
        window
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check(
            "profile",
            self.segments.len(),
            |n| *n > 0,
            "at least one segment",
        )?;
        for s in &self.segments {
            check(
                "profile",
                (s.from_rps, s.to_rps),
                |(a, b)| a.is_finite() && b.is_finite() && *a >= 0.0 && *b >= 0.0,
                "finite rates >= 0",
            )?;
            check(
                "profile",
                s.duration,
                |d| !d.is_zero(),
                "segments longer than zero",
            )?;
        }
        Ok(())
    }

    /// The arrival times (offsets from the start), in order.
    pub(crate) fn arrival_times<R: Rng + ?Sized>(
        &self,
        kind: Arrivals,
        rng: &mut R,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut seg_start = 0.0f64;
        let mut cumulative = 0.0f64;
        for seg in &self.segments {
            let len = seg.duration.as_secs_f64();
            let seg_end = seg_start + len;
            let rate =
                |t: f64| seg.from_rps + (seg.to_rps - seg.from_rps) * ((t - seg_start) / len);
            match kind {
                Arrivals::Constant => {
                    // Arrivals where the integral of the rate crosses 0.5, 1.5, 2.5, ...: for a
                    // linear rate a + kx the integral is ax + kx²/2, solved for x.
                    let a = seg.from_rps;
                    let k = (seg.to_rps - seg.from_rps) / len;
                    let c1 = cumulative + a * len + k * len * len / 2.0;
                    let mut target = (cumulative - 0.5).floor() + 1.5;
                    while target < c1 {
                        let n = target - cumulative;
                        let x = if k.abs() < 1e-12 {
                            n / a
                        } else {
                            (-a + (a * a + 2.0 * k * n).max(0.0).sqrt()) / k
                        };
                        out.push(Duration::from_secs_f64(seg_start + x.clamp(0.0, len)));
                        target += 1.0;
                    }
                    cumulative = c1;
                }
                Arrivals::Poisson => {
                    // Thinning with the segment's highest rate; memoryless, so exact at boundaries.
                    let max = seg.from_rps.max(seg.to_rps);
                    cumulative += (seg.from_rps + seg.to_rps) / 2.0 * len;
                    if max <= 0.0 {
                        seg_start = seg_end;
                        continue;
                    }
                    let mut t = seg_start;
                    loop {
                        let u: f64 = rng.random();
                        t += -(1.0 - u).ln() / max;
                        if t >= seg_end {
                            break;
                        }
                        if rng.random::<f64>() * max < rate(t) {
                            out.push(Duration::from_secs_f64(t));
                        }
                    }
                }
            }
            seg_start = seg_end;
        }
        // Whole microseconds keep the run independent of float formatting details.
        for t in &mut out {
            *t = Duration::from_micros(t.as_micros() as u64);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn arrival_counts_follow_the_profile() {
        let s = Duration::from_secs;
        let p = LoadProfile::new()
            .step(s(10), 100.0)
            .ramp(s(10), 0.0, 200.0);
        let mut rng = StdRng::seed_from_u64(1);
        let constant = p.arrival_times(Arrivals::Constant, &mut rng);
        assert!(
            (constant.len() as f64 - 2000.0).abs() <= 3.0,
            "{}",
            constant.len()
        );
        let poisson = p.arrival_times(Arrivals::Poisson, &mut rng);
        assert!(
            (poisson.len() as f64 - 2000.0).abs() < 150.0,
            "{}",
            poisson.len()
        );
        assert!(poisson.windows(2).all(|w| w[0] <= w[1]));
        let first_half = poisson.iter().filter(|t| **t < s(10)).count();
        assert!((first_half as f64 - 1000.0).abs() < 100.0);
        assert_eq!(p.expected_arrivals(s(0), s(20)), 2000.0);
    }

    #[test]
    fn empty_or_negative_profiles_are_rejected() {
        assert!(LoadProfile::new().validate().is_err());
        let neg = LoadProfile::new().step(Duration::from_secs(1), -1.0);
        assert_eq!(neg.validate().unwrap_err().field(), "profile");
    }
}
