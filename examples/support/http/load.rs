//! A bounded open-loop load generator: requests at a fixed rate, each with exactly one outcome.

use std::time::Duration;

use backstop::{BoxError, find_overload, is_timeout};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceExt};

use super::client::{HttpClient, get};

/// What one request came to. Exactly one per request sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A 2xx, after this long.
    Ok(Duration),
    /// 429 or 503 after this long; `retry_after` says whether the header was there.
    Refused {
        status: u16,
        retry_after: bool,
        after: Duration,
    },
    /// Any other status (a 500 from the handler, a 504 when the deadline ran out on the server).
    Status(u16),
    /// The client stack refused it itself (`Overloaded`: budget, bucket, throttle).
    ClientOverload,
    /// A client timeout (overall or per attempt).
    ClientTimeout,
    /// Any other client error (connection refused or reset).
    ClientError,
    /// No outcome within the generator's generous bound: a hang. Must never happen.
    Hung,
}

/// The counts of one run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sent: u64,
    pub ok: u64,
    pub refused_429: u64,
    pub refused_503: u64,
    /// 429/503 answers without `Retry-After`.
    pub refused_without_retry_after: u64,
    pub statuses: Vec<(u16, u64)>,
    pub client_overload: u64,
    pub client_timeout: u64,
    pub client_error: u64,
    pub hung: u64,
    /// Latencies of the 2xx answers, sorted.
    pub ok_latencies: Vec<Duration>,
    /// Latencies of the 429/503 answers, sorted.
    pub refused_latencies: Vec<Duration>,
    /// From the first request sent to the last outcome.
    pub elapsed: Duration,
    /// How long requests were being sent.
    pub sending: Duration,
    /// Every request: when it was sent, from the start of the whole load (not of its phase),
    /// and whether it got a 2xx. In the order sent.
    pub sent_at: Vec<(Duration, bool)>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok(latency) => {
                self.ok += 1;
                self.ok_latencies.push(latency);
            }
            Outcome::Refused {
                status,
                retry_after,
                after,
            } => {
                self.refused_latencies.push(after);
                if status == 429 {
                    self.refused_429 += 1
                } else {
                    self.refused_503 += 1
                }
                self.refused_without_retry_after += u64::from(!retry_after);
            }
            Outcome::Status(s) => match self.statuses.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => self.statuses.push((s, 1)),
            },
            Outcome::ClientOverload => self.client_overload += 1,
            Outcome::ClientTimeout => self.client_timeout += 1,
            Outcome::ClientError => self.client_error += 1,
            Outcome::Hung => self.hung += 1,
        }
    }

    /// Outcomes counted: must equal `sent`.
    pub fn outcomes(&self) -> u64 {
        self.ok
            + self.refused_429
            + self.refused_503
            + self.statuses.iter().map(|(_, n)| n).sum::<u64>()
            + self.client_overload
            + self.client_timeout
            + self.client_error
            + self.hung
    }

    /// The `q` quantile of the 2xx latencies (0 when there were none).
    pub fn ok_quantile(&self, q: f64) -> Duration {
        quantile(&self.ok_latencies, q)
    }

    /// The `q` quantile of the 429/503 latencies (0 when there were none).
    pub fn refused_quantile(&self, q: f64) -> Duration {
        quantile(&self.refused_latencies, q)
    }

    /// 2xx answers per second of sending.
    pub fn goodput(&self) -> f64 {
        self.ok as f64 / self.sending.as_secs_f64().max(1e-9)
    }

    /// Requests sent per second of sending.
    pub fn offered(&self) -> f64 {
        self.sent as f64 / self.sending.as_secs_f64().max(1e-9)
    }

    pub fn status_count(&self, status: u16) -> u64 {
        self.statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How many clients the generator's requests come from (`x-client-id: client-0` ...), so a
/// whole-client throttle has clients to choose among.
pub const CLIENTS: u64 = 32;

/// One request through `client`, from client `client_id`, read to the end of its body,
/// classified.
pub async fn one(mut client: HttpClient, url: String, client_id: u64, bound: Duration) -> Outcome {
    let start = Instant::now();
    let mut req = get(&url);
    let client_id = format!("client-{client_id}");
    req.headers_mut().insert(
        "x-client-id",
        client_id.parse().expect("a valid header value"),
    );
    let call = async {
        let res = client.ready().await?.call(req).await?;
        let status = res.status();
        let retry_after = res.headers().contains_key(http::header::RETRY_AFTER);
        res.into_body().collect().await?;
        Ok::<_, BoxError>((status, retry_after))
    };
    match tokio::time::timeout(bound, call).await {
        Err(_) => Outcome::Hung,
        Ok(Ok((status, _))) if status.is_success() => Outcome::Ok(start.elapsed()),
        Ok(Ok((status, retry_after))) if status == 429 || status == 503 => Outcome::Refused {
            status: status.as_u16(),
            retry_after,
            after: start.elapsed(),
        },
        Ok(Ok((status, _))) => Outcome::Status(status.as_u16()),
        Ok(Err(e)) if find_overload(e.as_ref()).is_some() => Outcome::ClientOverload,
        Ok(Err(e)) if is_timeout(e.as_ref()) => Outcome::ClientTimeout,
        Ok(Err(_)) => Outcome::ClientError,
    }
}

/// Sends GETs of `url` at `rate` per second for `duration` (at most `max_requests`), each
/// bounded by `hang_bound`, and waits for every outcome. Open loop: the rate does not slow down
/// when the server does, as real users' requests do not. Every request goes through `client`,
/// from client `i % CLIENTS` in turn.
pub async fn drive(
    client: &HttpClient,
    url: &str,
    rate: f64,
    duration: Duration,
    max_requests: u64,
    hang_bound: Duration,
) -> Tally {
    drive_clients(
        std::slice::from_ref(client),
        url,
        rate,
        duration,
        max_requests,
        hang_bound,
    )
    .await
}

/// [`drive`], with request `i` from client `i % CLIENTS` going through that client's own stack,
/// `clients[i % CLIENTS % clients.len()]` (one stack per client: each client is a process of its
/// own, with a token bucket of its own).
pub async fn drive_clients(
    clients: &[HttpClient],
    url: &str,
    rate: f64,
    duration: Duration,
    max_requests: u64,
    hang_bound: Duration,
) -> Tally {
    let phase = Phase { rate, duration };
    let mut tallies = drive_phases(clients, url, &[phase], max_requests, hang_bound).await;
    tallies.pop().unwrap_or_default()
}

/// One phase of a load: `rate` requests per second for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub rate: f64,
    pub duration: Duration,
}

/// [`drive_clients`] through `phases` one after the other (a surge, then the load falls), at
/// most `max_requests` in all; one [`Tally`] per phase, each counting the requests sent in it,
/// whenever their outcome came. Client ids go on in turn across phases.
pub async fn drive_phases(
    clients: &[HttpClient],
    url: &str,
    phases: &[Phase],
    max_requests: u64,
    hang_bound: Duration,
) -> Vec<Tally> {
    let mut tallies = vec![Tally::default(); phases.len()];
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let record = |tallies: &mut Vec<Tally>, done: Result<(usize, Duration, Outcome), _>| {
        // A task that panicked has no phase to go to: count it against the first.
        let (phase, at, outcome) = done.unwrap_or((0, Duration::ZERO, Outcome::ClientError));
        let tally: &mut Tally = &mut tallies[phase];
        tally.sent_at.push((at, matches!(outcome, Outcome::Ok(_))));
        tally.add(outcome);
    };
    for (p, phase) in phases.iter().enumerate() {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / phase.rate));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let phase_start = Instant::now();
        while phase_start.elapsed() < phase.duration && sent < max_requests {
            tick.tick().await;
            let id = sent % CLIENTS;
            let client = clients[id as usize % clients.len()].clone();
            let (url, at) = (url.to_owned(), start.elapsed());
            tasks.spawn(async move { (p, at, one(client, url, id, hang_bound).await) });
            tallies[p].sent += 1;
            sent += 1;
            // Collect finished ones as we go, so the set does not grow without bound.
            while let Some(done) = tasks.try_join_next() {
                record(&mut tallies, done);
            }
        }
        tallies[p].sending = phase_start.elapsed();
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut tallies, done);
    }
    for tally in &mut tallies {
        tally.elapsed = start.elapsed();
        tally.ok_latencies.sort();
        tally.refused_latencies.sort();
        tally.sent_at.sort_by_key(|(at, _)| *at);
    }
    tallies
}
