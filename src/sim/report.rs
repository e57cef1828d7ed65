//! What a run measured: a per-second time series, a summary, per-hop counts, and tables.

use std::fmt::{self, Write as _};
use std::time::Duration;

use super::recorder::Recorder;
use super::scenario::Scenario;
use super::server::HopCounters;
use crate::error::{ConfigError, check};

/// When a system counts as recovered after a surge.
///
/// Time is cut into 1 s buckets. Starting with the first bucket that begins at or after the end
/// of the surge, a bucket `b` is the *recovery point* when the `sustain` buckets from `b` on
/// (all inside the run) together deliver goodput of at least `goodput_share` × Σ min(offered,
/// capacity) (offered: new logical requests arriving in each bucket; capacity:
/// [`Scenario::capacity_rps`] × 1 s), and in each of them the median latency of the answers
/// delivered in time is at most `latency_factor` × [`Scenario::unloaded_latency`] (a bucket
/// with no answers passes only if nothing was offered in it). The recovery time is the start
/// of `b` minus the end of the surge.
///
/// If no bucket qualifies, the run reports [`Recovery::NotRecovered`] with a lower bound: every
/// bucket that could still start a full window failed, so recovery takes at least
/// `run length − (sustain − 1) s − surge end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecoveryRule {
    /// Consecutive 1 s buckets that must pass (default 5).
    pub sustain: u32,
    /// Share of min(offered, capacity) that must be delivered in time (default 0.9).
    pub goodput_share: f64,
    /// Largest median latency, as a multiple of the unloaded latency (default 2).
    pub latency_factor: f64,
}

impl Default for RecoveryRule {
    fn default() -> Self {
        RecoveryRule {
            sustain: 5,
            goodput_share: 0.9,
            latency_factor: 2.0,
        }
    }
}

impl RecoveryRule {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check("recovery.sustain", self.sustain, |s| *s > 0, "at least 1")?;
        check(
            "recovery.goodput_share",
            self.goodput_share,
            |g| (0.0..=1.0).contains(g),
            "in [0, 1]",
        )?;
        check(
            "recovery.latency_factor",
            self.latency_factor,
            |f| f.is_finite() && *f >= 1.0,
            "finite and >= 1",
        )
        .map(drop)
    }
}

/// How long the system took to recover after the surge (see [`RecoveryRule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Recovered this long after the surge ended.
    Recovered(Duration),
    /// Not recovered by the end of the run; recovery takes at least this long.
    NotRecovered(Duration),
    /// The scenario has no surge window.
    NoSurge,
}

impl Recovery {
    /// The measured seconds: the recovery time, or its lower bound when the system did not
    /// recover within the run (check [`recovered`](Self::recovered)); `None` without a surge.
    pub fn seconds(&self) -> Option<f64> {
        match self {
            Recovery::Recovered(d) | Recovery::NotRecovered(d) => Some(d.as_secs_f64()),
            Recovery::NoSurge => None,
        }
    }

    /// True when the system recovered within the run.
    pub fn recovered(&self) -> bool {
        matches!(self, Recovery::Recovered(_))
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovery::Recovered(d) => write!(f, "{:.0} s", d.as_secs_f64()),
            Recovery::NotRecovered(d) => write!(f, "none (>= {:.0} s)", d.as_secs_f64()),
            Recovery::NoSurge => f.write_str("n/a"),
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, from the start of the run.
    pub start: Duration,
    /// New logical requests that arrived.
    pub offered: u64,
    /// User loads started (first loads and reloads).
    pub loads: u64,
    /// Attempts sent to the front hop (retries and reloads included).
    pub attempts: u64,
    /// Logical requests answered before the user gave up, counted when answered.
    pub goodput: u64,
    /// Loads that ended in an error before the user gave up.
    pub errors: u64,
    /// Loads the user gave up on.
    pub gave_up: u64,
    /// Users who left for good (no reloads left).
    pub left: u64,
    /// Median latency of the answers in `goodput`.
    pub p50: Option<Duration>,
    /// 99th percentile latency of the answers in `goodput`.
    pub p99: Option<Duration>,
    /// Worker time spent, all hops.
    pub work: Duration,
    /// Worker time spent on attempts whose caller had left, or cut short, all hops.
    pub wasted: Duration,
}

/// Counts for one hop over the whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct HopReport {
    /// The hop's name.
    pub name: String,
    /// Its workers.
    pub capacity: usize,
    /// Requests sent to it (before its server stack).
    pub sent: u64,
    /// Requests that reached its [`SimServer`](super::SimServer) (the queue).
    pub arrivals: u64,
    /// Requests it answered.
    pub completed: u64,
    /// Requests dropped while queued or in service (their future was dropped).
    pub cancelled: u64,
    /// Requests that failed (a call to the next hop failed).
    pub failed: u64,
    /// Still in the server at the end of the run.
    pub in_flight_at_end: u64,
    /// Worker time spent.
    pub work: Duration,
    /// Worker time whose result nobody used.
    pub wasted: Duration,
    /// Time-average requests in the server (queue and service): the area under the in-flight
    /// curve over the run length.
    pub mean_in_flight: f64,
    /// Arrivals per second at the server.
    pub arrival_rate: f64,
    /// Mean time in the server of the requests that left it (answered, failed or cancelled).
    pub mean_latency: Option<Duration>,
}

impl HopReport {
    /// Little's law check: `arrival_rate × mean_latency / mean_in_flight − 1` (0 when the law
    /// holds exactly; requests still inside at the end make it drift).
    pub fn little_error(&self) -> Option<f64> {
        let w = self.mean_latency?.as_secs_f64();
        (self.mean_in_flight > 0.0).then(|| self.arrival_rate * w / self.mean_in_flight - 1.0)
    }
}

/// The whole-run figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// New logical requests over the run.
    pub offered: u64,
    /// Offered logical requests per second over the load profile.
    pub offered_rps: f64,
    /// Logical requests answered in time.
    pub succeeded: u64,
    /// Users who left without an answer.
    pub left: u64,
    /// Answered in time per second over the run.
    pub goodput_rps: f64,
    /// Attempts at the front hop per logical request.
    pub attempts_per_request: f64,
    /// Mean latency of the answers in time (from a user's load to its answer).
    pub mean_latency: Option<Duration>,
    /// Latency percentiles of the answers in time.
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// 99.9th percentile.
    pub p999: Option<Duration>,
    /// Worker time spent, all hops.
    pub work: Duration,
    /// Worker time wasted, all hops.
    pub wasted: Duration,
    /// The surge window.
    pub surge: Option<(Duration, Duration)>,
    /// Offered logical requests per second during the surge.
    pub surge_offered_rps: f64,
    /// Attempts per second at the front hop during the surge.
    pub surge_attempts_rps: f64,
    /// Goodput per second during the surge.
    pub surge_goodput_rps: f64,
    /// Surge goodput over capacity.
    pub surge_goodput_fraction: f64,
    /// Time to recover after the surge.
    pub recovery: Recovery,
}

impl Summary {
    /// Wasted over total worker time (0 when no work was done).
    pub fn wasted_fraction(&self) -> f64 {
        let w = self.work.as_secs_f64();
        if w > 0.0 {
            self.wasted.as_secs_f64() / w
        } else {
            0.0
        }
    }
}

/// What a scenario run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// The scenario's name.
    pub name: String,
    /// Its seed.
    pub seed: u64,
    /// [`Scenario::capacity_rps`].
    pub capacity_rps: f64,
    /// [`Scenario::unloaded_latency`].
    pub unloaded_latency: Duration,
    /// The simulated length of the run.
    pub run_for: Duration,
    /// One entry per second.
    pub series: Vec<Bucket>,
    /// Per hop, front first.
    pub hops: Vec<HopReport>,
    /// The whole-run figures.
    pub summary: Summary,
}

fn percentile(sorted: &[u64], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(Duration::from_micros(sorted[rank - 1]))
}

impl SimReport {
    pub(crate) fn build(
        scenario: &Scenario,
        rec: Recorder,
        hops: Vec<(String, usize, HopCounters)>,
        run_for: Duration,
    ) -> SimReport {
        let bucket = Duration::from_secs(1);
        let n = run_for.as_micros().div_ceil(bucket.as_micros()) as usize;
        let mut series = Vec::with_capacity(n);
        for i in 0..n {
            let u = rec.buckets.get(i).cloned().unwrap_or_default();
            let mut lat = u.latencies_us;
            lat.sort_unstable();
            let (mut work, mut wasted, mut attempts) = (0u64, 0u64, 0u64);
            for (h, (_, _, c)) in hops.iter().enumerate() {
                if let Some(b) = c.buckets.get(i) {
                    work += b.work_us;
                    wasted += b.wasted_us;
                    if h == 0 {
                        attempts = b.sent;
                    }
                }
            }
            series.push(Bucket {
                start: bucket * i as u32,
                offered: u.offered,
                loads: u.loads,
                attempts,
                goodput: u.goodput,
                errors: u.errors,
                gave_up: u.gave_up,
                left: u.left,
                p50: percentile(&lat, 0.5),
                p99: percentile(&lat, 0.99),
                work: Duration::from_micros(work),
                wasted: Duration::from_micros(wasted),
            });
        }

        let secs = run_for.as_secs_f64();
        let hop_reports: Vec<HopReport> = hops
            .into_iter()
            .map(|(name, capacity, c)| {
                let departed = c.completed + c.cancelled + c.failed;
                HopReport {
                    name,
                    capacity,
                    sent: c.sent,
                    arrivals: c.arrivals,
                    completed: c.completed,
                    cancelled: c.cancelled,
                    failed: c.failed,
                    in_flight_at_end: c.in_flight,
                    work: Duration::from_micros(c.work_us),
                    wasted: Duration::from_micros(c.wasted_us),
                    mean_in_flight: c.area_us as f64 / 1e6 / secs,
                    arrival_rate: c.arrivals as f64 / secs,
                    mean_latency: (departed > 0)
                        .then(|| Duration::from_micros(c.latency_us / departed)),
                }
            })
            .collect();

        let capacity_rps = scenario.capacity_rps();
        let unloaded_latency = scenario.unloaded_latency();
        let offered: u64 = series.iter().map(|b| b.offered).sum();
        let succeeded: u64 = series.iter().map(|b| b.goodput).sum();
        let q = |p: f64| {
            (!rec.latency.is_empty())
                .then(|| Duration::from_micros(rec.latency.value_at_quantile(p)))
        };
        let surge = scenario.surge;
        let in_surge =
            |b: &&Bucket| surge.is_some_and(|(s, e)| b.start >= s && b.start + bucket <= e);
        let surge_n = series.iter().filter(in_surge).count().max(1) as f64;
        let surge_sum = |f: fn(&Bucket) -> u64| {
            series.iter().filter(in_surge).map(f).sum::<u64>() as f64 / surge_n
        };
        let surge_goodput_rps = surge_sum(|b| b.goodput);
        let front_sent = hop_reports.first().map_or(0, |h| h.sent);

        let summary = Summary {
            offered,
            offered_rps: offered as f64 / scenario.profile.duration().as_secs_f64(),
            succeeded,
            left: series.iter().map(|b| b.left).sum(),
            goodput_rps: succeeded as f64 / secs,
            attempts_per_request: if offered > 0 {
                front_sent as f64 / offered as f64
            } else {
                0.0
            },
            mean_latency: (succeeded > 0)
                .then(|| Duration::from_micros(rec.latency_sum_us / succeeded)),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            work: hop_reports.iter().map(|h| h.work).sum(),
            wasted: hop_reports.iter().map(|h| h.wasted).sum(),
            surge,
            surge_offered_rps: surge_sum(|b| b.offered),
            surge_attempts_rps: surge_sum(|b| b.attempts),
            surge_goodput_rps,
            surge_goodput_fraction: surge_goodput_rps / capacity_rps,
            recovery: recovery(
                &series,
                surge,
                run_for,
                capacity_rps,
                unloaded_latency,
                &scenario.recovery,
            ),
        };
        SimReport {
            name: scenario.name.clone(),
            seed: scenario.seed,
            capacity_rps,
            unloaded_latency,
            run_for,
            series,
            hops: hop_reports,
            summary,
        }
    }

    /// The summary table of several runs, one row each (see [`table`]).
    pub fn table(&self) -> String {
        table(&[self])
    }

    /// The per-second time series as a table.
    pub fn series_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:>7} {:>8} {:>7} {:>6} {:>7} {:>9} {:>9} {:>7}",
            "t_s",
            "offered",
            "loads",
            "attempts",
            "goodput",
            "errors",
            "gave_up",
            "p50_ms",
            "p99_ms",
            "wasted"
        );
        for b in &self.series {
            let _ = writeln!(
                out,
                "{:>5} {:>7} {:>7} {:>8} {:>7} {:>6} {:>7} {:>9} {:>9} {:>6.0}%",
                b.start.as_secs(),
                b.offered,
                b.loads,
                b.attempts,
                b.goodput,
                b.errors,
                b.gave_up,
                ms(b.p50),
                ms(b.p99),
                100.0 * ratio(b.wasted, b.work),
            );
        }
        out
    }

    /// The per-hop counts as a table, with the Little's-law check.
    pub fn hop_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<10} {:>4} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7}",
            "hop",
            "c",
            "sent",
            "arrived",
            "completed",
            "cancelled",
            "failed",
            "work_s",
            "wasted",
            "in_flight",
            "little"
        );
        for h in &self.hops {
            let _ = writeln!(
                out,
                "{:<10} {:>4} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9.1} {:>6.0}% {:>9.2} {:>+6.1}%",
                h.name,
                h.capacity,
                h.sent,
                h.arrivals,
                h.completed,
                h.cancelled,
                h.failed,
                h.work.as_secs_f64(),
                100.0 * ratio(h.wasted, h.work),
                h.mean_in_flight,
                100.0 * h.little_error().unwrap_or(0.0),
            );
        }
        out
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

/// A summary table of several runs, one row each: offered load, attempts and goodput during the
/// surge, goodput as a share of capacity, latency percentiles of the answers in time, attempts
/// per logical request, wasted work, and the recovery time.
pub fn table(reports: &[&SimReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>16}",
        "run",
        "offered",
        "attempts",
        "goodput",
        "good/cap",
        "p50_ms",
        "p99_ms",
        "att/req",
        "wasted",
        "recovery"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>16}",
        "", "(surge/s)", "(surge/s)", "(surge/s)", "(surge)", "", "", "", "", ""
    );
    for r in reports {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{:<22} {:>8.1} {:>9.1} {:>9.1} {:>8.2} {:>8} {:>9} {:>9.2} {:>6.0}% {:>16}",
            r.name,
            s.surge_offered_rps,
            s.surge_attempts_rps,
            s.surge_goodput_rps,
            s.surge_goodput_fraction,
            ms(s.p50),
            ms(s.p99),
            s.attempts_per_request,
            100.0 * s.wasted_fraction(),
            s.recovery.to_string(),
        );
    }
    out
}

fn recovery(
    series: &[Bucket],
    surge: Option<(Duration, Duration)>,
    run_for: Duration,
    capacity_rps: f64,
    unloaded: Duration,
    rule: &RecoveryRule,
) -> Recovery {
    let Some((_, end)) = surge else {
        return Recovery::NoSurge;
    };
    let sustain = rule.sustain as usize;
    let first = series.iter().position(|b| b.start >= end);
    let max_p50 = unloaded.mul_f64(rule.latency_factor);
    let bucket_ok = |b: &Bucket| match b.p50 {
        Some(p50) => p50 <= max_p50,
        None => b.offered == 0,
    };
    if let Some(first) = first {
        for i in first..series.len() {
            let Some(window) = series.get(i..i + sustain) else {
                break;
            };
            let target: f64 = window
                .iter()
                .map(|b| (b.offered as f64).min(capacity_rps))
                .sum();
            let delivered: u64 = window.iter().map(|b| b.goodput).sum();
            if delivered as f64 >= rule.goodput_share * target && window.iter().all(bucket_ok) {
                return Recovery::Recovered(series[i].start.saturating_sub(end));
            }
        }
    }
    let last_unchecked = run_for.saturating_sub(Duration::from_secs(rule.sustain as u64 - 1));
    Recovery::NotRecovered(last_unchecked.saturating_sub(end))
}
