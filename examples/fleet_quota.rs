//! One tenant quota of 200 requests/s held across 4 server processes through Redis, and what
//! happens when Redis dies and comes back.
//!
//! Run: `cargo run --release --example fleet_quota --features redis` (needs `redis-server` on
//! PATH; about 35 s). The example starts its own `redis-server` on a free loopback port (no
//! persistence), then re-executes itself as 4 server processes. Each process serves a throttle
//! stack (`ThrottleLayer` with a `FleetQuotas` of 200/s, one quota for the fleet) and is driven
//! by its own client offering 150 requests/s for the one tenant, 600/s over the fleet, three
//! times the quota. The baseline runs in the same processes at the same time: a second stack
//! holding a second tenant, offered the same 150/s per process, to `ClientQuotas` of 200/s in
//! memory (each process on its own, as before the fleet store). Every 250 ms each process
//! prints its counters; the parent reads them.
//!
//! The timeline (seconds after the processes start together):
//! - 0–2: warm-up (the bucket starts full: its burst of 200 is spent here, not measured);
//! - 2–10: Redis up, measured: `admitted_rps` and `redis_calls_per_request`;
//! - 10: Redis killed (SIGKILL); 10–18 measured: `redis_down_admitted_rps`, the fleet on local
//!   shares (200/s ÷ the 4 processes Redis last counted);
//! - 18: Redis restarted, empty (its new bucket is full again: spent in the first half second);
//! - 20–28: measured again: `recovered` is 1 when the fleet is within ±5% of the quota.
//!
//! A request "failed for Redis's sake" is one answered with anything but a response or the
//! throttle's refusal: the example counts them and prints the count.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::fleet::FleetQuotas;
use backstop::throttle::{ClientId, ClientQuotas, Quota, ThrottleLayer};
use backstop::{BoxError, OverloadReason, find_overload};
use redis_server::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

const QUOTA: u32 = 200;
const PROCESSES: usize = 4;
const OFFERED_PER_PROCESS: u32 = 150;
/// Milliseconds after the common start.
const KILL_AT: u64 = 10_000;
const RESTART_AT: u64 = 18_000;
const END_AT: u64 = 28_000;
const UP: (u64, u64) = (2_000, KILL_AT);
const DOWN: (u64, u64) = (KILL_AT, RESTART_AT);
const BACK: (u64, u64) = (20_000, END_AT);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--server" {
        let start: u64 = args[3].parse()?;
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(server(args[2].clone(), start));
    }
    parent()
}

/// One server process: the throttle stack over a trivial handler, driven by a client at
/// `OFFERED_PER_PROCESS` requests/s from `start` (unix ms) to `start + END_AT`.
async fn server(url: String, start: u64) -> Result<(), BoxError> {
    let quota = Quota::per_second(NonZeroU32::new(QUOTA).unwrap());
    let fleet = FleetQuotas::builder("fleet", url, quota).build()?;
    let tenant = |_: &u64| Some(ClientId::from("tenant-a"));
    let mut svc = ServiceBuilder::new()
        .layer(
            ThrottleLayer::builder("fleet", tenant)
                .quotas(fleet.clone())
                .build()?,
        )
        .service_fn(|_req: u64| async { Ok::<_, BoxError>(()) });
    let mut base = ServiceBuilder::new()
        .layer(
            ThrottleLayer::builder("base", |_: &u64| Some(ClientId::from("tenant-b")))
                .quotas(ClientQuotas::builder("base", quota).build()?)
                .build()?,
        )
        .service_fn(|_req: u64| async { Ok::<_, BoxError>(()) });
    let mut base_admitted = 0u64;
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(unix_ms()))).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / OFFERED_PER_PROCESS);
    let mut report = tokio::time::interval(Duration::from_millis(250));
    let (mut offered, mut admitted, mut refused, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                offered += 1;
                match svc.ready().await?.call(offered).await {
                    Ok(()) => admitted += 1,
                    Err(e) if find_overload(e.as_ref()).is_some_and(|o| o.reason() == OverloadReason::Throttled) => refused += 1,
                    Err(_) => failed += 1,
                }
                base_admitted += u64::from(base.ready().await?.call(offered).await.is_ok());
            }
            _ = report.tick() => {
                let now = unix_ms();
                let s = fleet.stats();
                writeln!(out, "tick {} {offered} {admitted} {refused} {failed} {} {} {} {base_admitted}",
                    now.saturating_sub(start), s.redis_calls, s.fallback_admitted + s.fallback_refused, s.live_processes)?;
                out.flush()?;
                if now >= start + END_AT + 250 {
                    return Ok(());
                }
            }
        }
    }
}

/// A server's cumulative counters at one report.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    at: u64,
    offered: u64,
    admitted: u64,
    refused: u64,
    failed: u64,
    redis_calls: u64,
    fallback: u64,
    live: u64,
    base_admitted: u64,
}

fn parse(line: &str) -> Option<Report> {
    let v: Vec<u64> = line
        .strip_prefix("tick ")?
        .split(' ')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [
        at,
        offered,
        admitted,
        refused,
        failed,
        redis_calls,
        fallback,
        live,
        base_admitted,
    ] = v[..]
    else {
        return None;
    };
    Some(Report {
        at,
        offered,
        admitted,
        refused,
        failed,
        redis_calls,
        fallback,
        live,
        base_admitted,
    })
}

/// Kills a server process when dropped, so a panicking parent leaves none behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the fleet did between two moments, from every server's reports.
#[derive(Debug, Default)]
struct Phase {
    secs: f64,
    offered: u64,
    admitted: u64,
    refused: u64,
    failed: u64,
    redis_calls: u64,
    fallback: u64,
    base_admitted: u64,
}

impl Phase {
    fn of(servers: &[Vec<Report>], (from, to): (u64, u64)) -> Phase {
        let at = |reports: &[Report], t: u64| {
            reports
                .iter()
                .rev()
                .find(|r| r.at <= t)
                .copied()
                .unwrap_or_default()
        };
        let mut p = Phase::default();
        for reports in servers {
            let (a, b) = (at(reports, from), at(reports, to));
            p.secs += (b.at - a.at) as f64 / 1000.0 / servers.len() as f64;
            p.offered += b.offered - a.offered;
            p.admitted += b.admitted - a.admitted;
            p.refused += b.refused - a.refused;
            p.failed += b.failed - a.failed;
            p.base_admitted += b.base_admitted - a.base_admitted;
            p.redis_calls += b.redis_calls - a.redis_calls;
            p.fallback += b.fallback - a.fallback;
        }
        p
    }

    fn admitted_rps(&self) -> f64 {
        self.admitted as f64 / self.secs
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<22} {:>4.1} s  offered {:>5.1}/s  admitted {:>5.1}/s ({:.3}× quota; baseline {:.3}×)  refused {:>5}  Redis calls {:>4} ({:.4}/request)  on local share {:>5}  failed {}",
            self.secs,
            self.offered as f64 / self.secs,
            self.admitted_rps(),
            self.admitted_rps() / f64::from(QUOTA),
            self.base_admitted as f64 / self.secs / f64::from(QUOTA),
            self.refused,
            self.redis_calls,
            self.redis_calls as f64 / self.offered.max(1) as f64,
            self.fallback,
            self.failed,
        );
    }
}

fn parent() -> Result<(), BoxError> {
    let mut redis = RedisServer::start();
    println!(
        "redis-server on {}; {PROCESSES} server processes, one tenant quota of {QUOTA}/s, offered {}/s",
        redis.url(),
        OFFERED_PER_PROCESS * PROCESSES as u32
    );
    let start = unix_ms() + 1_500;
    let exe = std::env::current_exe()?;
    let mut servers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..PROCESSES {
        let mut child = Command::new(&exe)
            .args(["--server", &redis.url(), &start.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        servers.push(Server(child));
        readers.push(std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse(&l))
                .collect::<Vec<Report>>()
        }));
    }
    let sleep_until =
        |t: u64| std::thread::sleep(Duration::from_millis((start + t).saturating_sub(unix_ms())));
    sleep_until(KILL_AT);
    redis.kill();
    println!(
        "t = {:.1} s: redis-server killed",
        (unix_ms() - start) as f64 / 1000.0
    );
    sleep_until(RESTART_AT);
    redis.restart();
    println!(
        "t = {:.1} s: redis-server restarted (empty)",
        (unix_ms() - start) as f64 / 1000.0
    );
    // The servers stop on their own at END_AT; the reader threads end with their output.
    let reports: Vec<Vec<Report>> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    drop(servers);
    assert!(
        reports
            .iter()
            .all(|r| r.last().is_some_and(|l| l.at >= END_AT)),
        "a server process stopped early"
    );

    let up = Phase::of(&reports, UP);
    let down = Phase::of(&reports, DOWN);
    let back = Phase::of(&reports, BACK);
    let all = Phase::of(&reports, (0, END_AT));
    up.print("Redis up (2–10 s)");
    down.print("Redis down (10–18 s)");
    back.print("Redis back (20–28 s)");
    all.print("whole run (0–28 s)");
    let live: Vec<u64> = reports.iter().map(|r| r[r.len() - 1].live).collect();
    println!(
        "baseline, the same load held by ClientQuotas in each process: {:.1}/s with Redis up, {:.2}× the fleet store's",
        up.base_admitted as f64 / up.secs,
        up.base_admitted as f64 / up.admitted.max(1) as f64
    );
    println!("processes Redis counted at the end, per server: {live:?}");
    println!(
        "requests failed for Redis's sake (neither a response nor a throttling refusal): {}",
        all.failed
    );
    let within = |p: &Phase, tol: f64| (p.admitted_rps() / f64::from(QUOTA) - 1.0).abs() <= tol;
    println!(
        "summary: quota_rps={QUOTA} admitted_rps={:.1} redis_calls_per_request={:.4} redis_down_admitted_rps={:.1} recovered={}",
        up.admitted_rps(),
        up.redis_calls as f64 / up.offered.max(1) as f64,
        down.admitted_rps(),
        u8::from(within(&back, 0.05)),
    );
    Ok(())
}
