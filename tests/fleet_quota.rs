//! The fleet quota store against a real `redis-server` on loopback (started and killed by each
//! test). Redis's clock is real, so these tests assert what does not depend on the machine's
//! speed: lease accounting, the bound on the fleet's excess, fallback when Redis dies or answers
//! garbage, no request failing for Redis's sake, and bounded waits.

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use std::num::NonZeroU32;
use std::process::Command;
use std::time::{Duration, Instant};

use backstop::fleet::{FleetQuotas, FleetStats};
use backstop::throttle::{ClientId, Quota, ThrottleLayer};
use backstop::{BoxError, OverloadReason, find_overload};
use redis_server::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Every test is bounded, whatever Redis does.
const BOUND: Duration = Duration::from_secs(30);

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap())
}

fn redis_cli(server: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `done` every 10 ms for at most `within`.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota_within_the_stated_bound() {
    let redis = RedisServer::start();
    tokio::time::timeout(BOUND, async {
        let (rate, burst, max_lease) = (100u64, 100u64, 16u32);
        // Four handles: four processes as far as Redis can tell (own ids, own tables).
        let fleet: Vec<FleetQuotas> = (0..4)
            .map(|_| {
                FleetQuotas::builder("share", redis.url(), per_second(rate as u32))
                    .max_lease(max_lease)
                    .build()
                    .unwrap()
            })
            .collect();
        let tenant = ClientId::from("tenant-a");
        let start = Instant::now();
        let mut admitted = 0u64;
        let mut requests = 0u64;
        // Each process offers far more than the quota, round robin, for 1.5 s.
        while start.elapsed() < Duration::from_millis(1500) {
            for q in &fleet {
                requests += 1;
                admitted += u64::from(q.check(&tenant).is_ok());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let stats: Vec<FleetStats> = fleet.iter().map(|q| q.stats()).collect();
        let calls: u64 = stats.iter().map(|s| s.redis_calls).sum();
        println!(
            "admitted {admitted} of {requests} in {elapsed:.2} s; {calls} Redis calls; {stats:?}"
        );
        assert!(stats.iter().all(|s| s.failed_calls == 0 && !s.degraded));
        // The bound of the module docs: the bucket, the leases held before, and the shares
        // not charged yet (a burst, and the rate over one call timeout of 100 ms).
        let bound = rate as f64 * elapsed
            + burst as f64
            + 4.0 * f64::from(max_lease)
            + burst as f64
            + rate as f64 * 0.1;
        assert!(admitted as f64 <= bound, "admitted {admitted} > bound {bound:.0}");
        // Spending the lease tokens is local: far fewer calls than requests.
        assert!(calls * 5 < requests, "{calls} calls for {requests} requests");
        // Every admitted request was a leased token or a share admission charged later.
        for s in &stats {
            assert!(s.admitted_from_lease <= s.leased_tokens);
            assert_eq!(s.admitted_from_lease + s.admitted_from_share, requests / 4 - s.refused);
        }
        // Redis counted the four processes serving the tenant.
        assert!(eventually(Duration::from_secs(2), || fleet.iter().all(|q| q.stats().live_processes == 4)).await);
        let (bucket, procs) = fleet[0].redis_keys(&tenant);
        let bucket_bytes: u64 = redis_cli(&redis, &["MEMORY", "USAGE", &bucket]).parse().unwrap();
        let procs_bytes: u64 = redis_cli(&redis, &["MEMORY", "USAGE", &procs]).parse().unwrap();
        println!("Redis memory for one client: bucket {bucket_bytes} B, process set {procs_bytes} B (4 processes)");
        assert!(bucket_bytes <= 160 && procs_bytes <= 256, "{bucket_bytes} B, {procs_bytes} B");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_falls_back_to_the_local_share_and_recovers() {
    let mut redis = RedisServer::start();
    tokio::time::timeout(BOUND, async {
        let fleet = FleetQuotas::builder("kill", redis.url(), per_second(100))
            .retry_every(Duration::from_millis(100))
            .call_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(
                ThrottleLayer::builder("kill", |t: &&'static str| Some(ClientId::from(*t)))
                    .quotas(fleet.clone())
                    .build()
                    .unwrap(),
            )
            .service_fn(|_t: &'static str| async { Ok::<_, BoxError>(()) });
        // Offers ~400/s for `d`; every answer must be a response or a throttling refusal.
        let mut drive = async |d: Duration| {
            let (mut ok, mut refused) = (0u64, 0u64);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_micros(2500));
            while start.elapsed() < d {
                tick.tick().await;
                let t0 = Instant::now();
                match svc.ready().await.unwrap().call("tenant").await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        let o = find_overload(e.as_ref()).expect("only throttling refusals");
                        assert_eq!(o.reason(), OverloadReason::Throttled);
                        refused += 1;
                    }
                }
                // The decision never waits on Redis (a dead one refuses connections at
                // once; the margin is for a loaded machine's scheduling).
                assert!(
                    t0.elapsed() < Duration::from_millis(500),
                    "a request waited {:?}",
                    t0.elapsed()
                );
            }
            (ok, refused)
        };
        let up = drive(Duration::from_millis(800)).await;
        assert!(!fleet.stats().degraded);
        let before = fleet.stats();
        redis.kill();
        let down = drive(Duration::from_millis(1000)).await;
        let during = fleet.stats();
        println!("up {up:?} down {down:?} {during:?}");
        assert!(
            during.degraded,
            "Redis is dead: the handle runs on its share"
        );
        assert!(during.failed_calls > before.failed_calls);
        assert!(during.fallback_admitted > before.fallback_admitted);
        // Probes are one per retry_every, not one per request.
        assert!(
            during.redis_calls - before.redis_calls <= 15,
            "{} calls while down",
            during.redis_calls - before.redis_calls
        );
        assert!(down.0 > 0, "the local share admits while Redis is down");
        redis.restart();
        let back = drive(Duration::from_millis(1000)).await;
        let after = fleet.stats();
        println!("back {back:?} {after:?}");
        assert!(!after.degraded, "Redis answered again: back on leases");
        assert!(after.leased_tokens > during.leased_tokens);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_no_request_a_wait_and_is_left_after_the_call_timeout() {
    let redis = RedisServer::start();
    tokio::time::timeout(BOUND, async {
        let fleet = FleetQuotas::builder("slow", redis.url(), per_second(100))
            .call_timeout(Duration::from_millis(50))
            .retry_every(Duration::from_millis(100))
            .build()
            .unwrap();
        let tenant = ClientId::from("tenant");
        // Offers ~400/s for `d`, timing every decision.
        let drive = async |d: Duration| {
            let (mut admitted, mut slowest) = (0u64, Duration::ZERO);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_micros(2500));
            while start.elapsed() < d {
                tick.tick().await;
                let t0 = Instant::now();
                admitted += u64::from(fleet.check(&tenant).is_ok());
                slowest = slowest.max(t0.elapsed());
            }
            (admitted, slowest)
        };
        drive(Duration::from_millis(500)).await;
        assert!(!fleet.stats().degraded && fleet.stats().leased_tokens > 0);
        redis.pause();
        let (admitted, slowest) = drive(Duration::from_millis(1000)).await;
        let frozen = fleet.stats();
        redis.resume();
        println!("frozen: admitted {admitted}, slowest decision {slowest:?}, {frozen:?}");
        assert!(
            frozen.degraded,
            "no answer within call_timeout: local shares"
        );
        assert!(frozen.fallback_admitted > 0 && admitted > 0);
        assert!(
            // A decision that waited on the frozen Redis would take the whole freeze (1 s);
            // the margin is for a loaded machine's scheduling, not for Redis.
            slowest < Duration::from_millis(500),
            "a decision took {slowest:?}"
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                let _ = fleet.check(&tenant);
                !fleet.stats().degraded
            })
            .await,
            "thawed Redis answers again"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_startup_builds_and_serves_from_the_local_share() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    tokio::time::timeout(BOUND, async {
        let fleet =
            FleetQuotas::builder("down", format!("redis://127.0.0.1:{port}/"), per_second(10))
                .expected_processes(2)
                .build()
                .unwrap();
        let tenant = ClientId::from("t");
        // The share of 2 processes: 5/s, burst 5. Admitted at once, without waiting.
        let results: Vec<_> = (0..6).map(|_| fleet.check(&tenant)).collect();
        assert!(results[..5].iter().all(|r| r.is_ok()), "{results:?}");
        let wait = results[5].unwrap_err();
        assert!(
            wait > Duration::from_millis(100) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(eventually(Duration::from_secs(5), || fleet.stats().degraded).await);
        assert!(fleet.stats().failed_calls >= 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_redis_is_a_failed_call_not_a_failed_request() {
    let redis = RedisServer::start();
    tokio::time::timeout(BOUND, async {
        let fleet = FleetQuotas::builder("garbage", redis.url(), per_second(50))
            .build()
            .unwrap();
        let tenant = ClientId::from("tenant");
        let (bucket, _) = fleet.redis_keys(&tenant);
        // The key holds a string, not the script's hash: the script errs (WRONGTYPE).
        assert_eq!(redis_cli(&redis, &["SET", &bucket, "not a bucket"]), "OK");
        assert!(
            fleet.check(&tenant).is_ok(),
            "the first request is decided on the share"
        );
        assert!(eventually(Duration::from_secs(5), || fleet.stats().degraded).await);
        assert!(fleet.stats().failed_calls >= 1);
        // Requests are still decided, from the share.
        assert!(fleet.check(&tenant).is_ok());
        assert!(fleet.stats().fallback_admitted >= 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_nonsense_is_a_failed_call() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers every read with one integer: never the script's three.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b":42\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    tokio::time::timeout(BOUND, async {
        let fleet = FleetQuotas::builder(
            "nonsense",
            format!("redis://127.0.0.1:{port}/"),
            per_second(50),
        )
        .build()
        .unwrap();
        let tenant = ClientId::from("tenant");
        assert!(fleet.check(&tenant).is_ok());
        assert!(eventually(Duration::from_secs(5), || fleet.stats().degraded).await);
        let s = fleet.stats();
        assert!(s.failed_calls >= 1 && s.leased_tokens == 0, "{s:?}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_key_costs_a_fixed_redis_key_and_bounded_memory_that_expires() {
    let redis = RedisServer::start();
    tokio::time::timeout(BOUND, async {
        let fleet = FleetQuotas::builder("mem", redis.url(), per_second(100)).build().unwrap();
        let short = ClientId::from("abc");
        let huge = ClientId::from(vec![b'k'; 1 << 20].as_slice());
        let (short_key, _) = fleet.redis_keys(&short);
        let (huge_key, huge_procs) = fleet.redis_keys(&huge);
        assert_eq!(short_key.len(), huge_key.len());
        assert!(fleet.check(&huge).is_ok());
        assert!(eventually(Duration::from_secs(5), || fleet.stats().redis_calls >= 1).await);
        assert_eq!(fleet.stats().failed_calls, 0);
        let bucket_bytes: u64 = redis_cli(&redis, &["MEMORY", "USAGE", &huge_key]).parse().unwrap();
        let procs_bytes: u64 = redis_cli(&redis, &["MEMORY", "USAGE", &huge_procs]).parse().unwrap();
        println!("Redis memory for one client: bucket {bucket_bytes} B, process set {procs_bytes} B (1 process)");
        assert!(bucket_bytes <= 160 && procs_bytes <= 160, "{bucket_bytes} B, {procs_bytes} B");
        // The bucket is on Redis's clock (`TIME`, µs), whatever the callers' clocks say.
        let stored: f64 = redis_cli(&redis, &["HGET", &huge_key, "t"]).parse().unwrap();
        let time = redis_cli(&redis, &["TIME"]);
        let mut parts = time.lines().map(|l| l.trim().parse::<f64>().unwrap());
        let redis_now = parts.next().unwrap() * 1e6 + parts.next().unwrap();
        assert!(
            (0.0..5e6).contains(&(redis_now - stored)),
            "bucket time {stored} against Redis TIME {redis_now}"
        );
        // Both keys expire: the bucket once full again (≤ 1 s at 100/s + 1 s), the set after
        // the live window.
        let ttl: i64 = redis_cli(&redis, &["PTTL", &huge_key]).parse().unwrap();
        assert!((0..=2_100).contains(&ttl), "bucket PTTL {ttl}");
        let ttl: i64 = redis_cli(&redis, &["PTTL", &huge_procs]).parse().unwrap();
        assert!((0..=10_000).contains(&ttl), "set PTTL {ttl}");
    })
    .await
    .expect("bounded");
}

#[test]
fn bad_configuration_names_the_field() {
    let q = per_second(10);
    let err = FleetQuotas::builder("x", "not a url", q)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "redis_url");
    assert!(
        !err.to_string().contains("not a url"),
        "the URL may hold a password"
    );
    let err = FleetQuotas::builder("x", "redis://127.0.0.1/", q)
        .max_lease(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_lease");
    assert!(err.to_string().contains("[1, 1000000]"));
    let long = Quota::with_period(Duration::from_secs(1 << 40))
        .unwrap()
        .allow_burst(NonZeroU32::new(1 << 20).unwrap());
    let err = FleetQuotas::builder("x", "redis://127.0.0.1/", long)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "default_quota");
    for (field, b) in [
        (
            "lease_period",
            FleetQuotas::builder("x", "redis://127.0.0.1/", q).lease_period(Duration::ZERO),
        ),
        (
            "call_timeout",
            FleetQuotas::builder("x", "redis://127.0.0.1/", q).call_timeout(Duration::ZERO),
        ),
        (
            "max_keys",
            FleetQuotas::builder("x", "redis://127.0.0.1/", q).max_keys(0),
        ),
        (
            "expected_processes",
            FleetQuotas::builder("x", "redis://127.0.0.1/", q).expected_processes(0),
        ),
        (
            "key_prefix",
            FleetQuotas::builder("x", "redis://127.0.0.1/", q).key_prefix(""),
        ),
    ] {
        assert_eq!(b.build().unwrap_err().field(), field);
    }
}
