//! How long a simulated worker spends on one request.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal};

use crate::error::{ConfigError, check};

/// The distribution of a server's service time (the work per request, without queueing).
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceTime {
    /// Always the same.
    Fixed(Duration),
    /// Exponentially distributed with this mean (memoryless, the M/M/c textbook case).
    Exponential {
        /// The mean.
        mean: Duration,
    },
    /// Log-normally distributed with this mean and coefficient of variation (std dev / mean).
    LogNormal {
        /// The mean.
        mean: Duration,
        /// Standard deviation over mean, > 0.
        cv: f64,
    },
    /// A fast body with a slow tail: with probability `slow_fraction` the request takes the
    /// `slow` time, otherwise it follows `fast`.
    SlowTail {
        /// The usual case.
        fast: Box<ServiceTime>,
        /// The tail case.
        slow: Box<ServiceTime>,
        /// The share of requests in the tail, in [0, 1].
        slow_fraction: f64,
    },
}

impl ServiceTime {
    /// The mean service time.
    pub fn mean(&self) -> Duration {
        match self {
            ServiceTime::Fixed(d) => *d,
            ServiceTime::Exponential { mean } | ServiceTime::LogNormal { mean, .. } => *mean,
            ServiceTime::SlowTail {
                fast,
                slow,
                slow_fraction,
            } => fast
                .mean()
                .mul_f64(1.0 - slow_fraction)
                .saturating_add(slow.mean().mul_f64(*slow_fraction)),
        }
    }

    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        match self {
            ServiceTime::Fixed(_) => Ok(()),
            ServiceTime::Exponential { mean } => {
                check(field, *mean, |m| !m.is_zero(), "a mean greater than zero").map(drop)
            }
            ServiceTime::LogNormal { mean, cv } => {
                check(field, *mean, |m| !m.is_zero(), "a mean greater than zero")?;
                check(field, *cv, |c| c.is_finite() && *c > 0.0, "a cv > 0").map(drop)
            }
            ServiceTime::SlowTail {
                fast,
                slow,
                slow_fraction,
            } => {
                fast.validate(field)?;
                slow.validate(field)?;
                check(
                    field,
                    *slow_fraction,
                    |p| (0.0..=1.0).contains(p),
                    "a slow_fraction in [0, 1]",
                )
                .map(drop)
            }
        }
    }

    /// Draws one service time. The configuration was validated, so the distributions exist.
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let secs = match self {
            ServiceTime::Fixed(d) => return *d,
            ServiceTime::Exponential { mean } => Exp::new(1.0 / mean.as_secs_f64())
                .map(|d| d.sample(rng))
                .unwrap_or(mean.as_secs_f64()),
            ServiceTime::LogNormal { mean, cv } => LogNormal::from_mean_cv(mean.as_secs_f64(), *cv)
                .map(|d| d.sample(rng))
                .unwrap_or(mean.as_secs_f64()),
            ServiceTime::SlowTail {
                fast,
                slow,
                slow_fraction,
            } => {
                let u: f64 = rand::RngExt::random(rng);
                return if u < *slow_fraction {
                    slow.sample(rng)
                } else {
                    fast.sample(rng)
                };
            }
        };
        // Whole microseconds, so that reports do not depend on sub-microsecond float noise.
        Duration::from_micros((secs * 1e6).round().clamp(0.0, 1e13) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn sample_mean(st: &ServiceTime, n: u32) -> f64 {
        let mut rng = StdRng::seed_from_u64(7);
        (0..n)
            .map(|_| st.sample(&mut rng).as_secs_f64())
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn sampled_means_match_the_configured_means() {
        let ms = Duration::from_millis;
        let cases = [
            ServiceTime::Fixed(ms(10)),
            ServiceTime::Exponential { mean: ms(10) },
            ServiceTime::LogNormal {
                mean: ms(10),
                cv: 0.5,
            },
            ServiceTime::SlowTail {
                fast: Box::new(ServiceTime::Fixed(ms(10))),
                slow: Box::new(ServiceTime::Fixed(ms(110))),
                slow_fraction: 0.1,
            },
        ];
        for st in cases {
            let want = st.mean().as_secs_f64();
            let got = sample_mean(&st, 200_000);
            assert!((got / want - 1.0).abs() < 0.01, "{st:?}: {got} vs {want}");
        }
    }

    #[test]
    fn invalid_distributions_are_rejected() {
        let bad = ServiceTime::LogNormal {
            mean: Duration::from_millis(1),
            cv: -1.0,
        };
        assert_eq!(
            bad.validate("service_time").unwrap_err().field(),
            "service_time"
        );
        let bad = ServiceTime::SlowTail {
            fast: Box::new(ServiceTime::Fixed(Duration::ZERO)),
            slow: Box::new(ServiceTime::Fixed(Duration::ZERO)),
            slow_fraction: 1.5,
        };
        assert!(bad.validate("service_time").is_err());
    }
}
