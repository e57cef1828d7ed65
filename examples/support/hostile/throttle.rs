//! The throttle under a hostile key stream: a flood of new 1 KiB `x-client-id` values while a
//! newcomer, a client back from idle and a client over its quota keep asking.
//!
//! One paused-clock runtime, bounded work (about 300,000 requests): the server's throttle keeps
//! the default table (100,000 clients) and gives every client 10 requests a second.
//! 1. Before: the idle client makes one request, the abuser spends its burst; then 100,000
//!    flood keys (1 KiB each) arrive in 5 s and fill the table.
//! 2. The run, 20 s: 200,000 more new flood keys (10 a millisecond); the newcomer arrives and
//!    sends 5 a second (half its quota); the idle client comes back at 10 s and sends 5 a
//!    second; the abuser asks 20 a second.
//! 3. The same newcomer schedule with no flood at all, on a fresh throttle: the baseline.
//!
//! Memory is the live heap (the counting global allocator of `alloc.rs`) held after the flood
//! minus before the throttle was built, divided by the clients it tracks; once with 1 KiB keys,
//! once with 16-byte keys. The binary must install that allocator, and this module reads it as
//! `super::alloc` (a sibling module, as `hostile::alloc` is beside `hostile::throttle`).

// The binary that includes this part may read only some of the figures.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::time::Duration;

use backstop::BoxError;
use backstop::throttle::{ClientQuotas, HeaderKey, Quota, ThrottleLayer};
use tower::{Layer, Service, ServiceExt};

use super::alloc;

/// What [`measure`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleFigures {
    /// Share of the newcomer's requests admitted while the flood ran (it asks half its quota).
    pub newcomer_admitted: f64,
    /// Distinct new keys that arrived during the newcomer's run.
    pub flood_keys: u64,
    /// Live heap bytes per tracked client, keys of 1 KiB.
    pub bytes_per_key: u64,
    /// The newcomer's admitted share with no flood, same schedule: the baseline.
    pub newcomer_admitted_no_flood: f64,
    /// Share of the returning (once idle) client's requests admitted during the flood.
    pub returning_admitted: f64,
    /// Requests of the abuser admitted during the run, and what its quota allows in that time.
    pub abuser_admitted: u64,
    /// What the abuser's quota allows over the run (10 a second for 20 s, plus the bucket edge).
    pub abuser_allowed: u64,
    /// Live heap bytes of the flood run's throttle per client it still tracked at the end (the
    /// sweeps had dropped the flood keys whose bucket was full again; the table's size is fixed).
    pub bytes_after_flood: u64,
    /// Live heap bytes per tracked client, keys of 16 bytes (the same table: should match).
    pub bytes_per_short_key: u64,
    /// Clients the table tracked at the end, and its bound.
    pub tracked_keys: u64,
    /// The table's bound.
    pub max_keys: u64,
}

const QUOTA_PER_SECOND: u32 = 10;
const PRE_FLOOD_KEYS: u64 = 100_000;
const RUN_MS: u64 = 20_000;
const FLOOD_PER_MS: u64 = 10;

/// Runs the three phases and returns what they measured.
pub fn measure() -> ThrottleFigures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let long = rt.block_on(flood_run(1024, true));
    let bytes_per_key = rt.block_on(memory_only(1024));
    let short = rt.block_on(memory_only(16));
    let baseline = rt.block_on(flood_run(1024, false));
    ThrottleFigures {
        newcomer_admitted: long.newcomer,
        flood_keys: long.flood_keys,
        bytes_per_key,
        bytes_after_flood: long.bytes_per_key,
        newcomer_admitted_no_flood: baseline.newcomer,
        returning_admitted: long.returning,
        abuser_admitted: long.abuser,
        abuser_allowed: RUN_MS / 1000 * u64::from(QUOTA_PER_SECOND) + 1,
        bytes_per_short_key: short,
        tracked_keys: long.tracked,
        max_keys: long.max_keys,
    }
}

/// A few lines saying what the figures mean.
pub fn describe(f: &ThrottleFigures) -> String {
    format!(
        "throttle: a newcomer asking half its quota was admitted {:.3} of the time while {} new \
         1 KiB keys arrived ({:.3} with no flood: ratio {:.3});\n  a client back from idle: \
         {:.3}; a client over its quota: {} admitted of the {} its quota allows (not reset by \
         the flood);\n  a full table: {} B a client with 1 KiB keys, {} B with 16-byte keys \
         (ratio {:.2}); after the flood run the sweeps had left {} of {} slots in use ({} B a \
         client still tracked).",
        f.newcomer_admitted,
        f.flood_keys,
        f.newcomer_admitted_no_flood,
        f.newcomer_admitted / f.newcomer_admitted_no_flood,
        f.returning_admitted,
        f.abuser_admitted,
        f.abuser_allowed,
        f.bytes_per_key,
        f.bytes_per_short_key,
        f.bytes_per_key as f64 / f.bytes_per_short_key.max(1) as f64,
        f.tracked_keys,
        f.max_keys,
        f.bytes_after_flood,
    )
}

struct Run {
    newcomer: f64,
    returning: f64,
    abuser: u64,
    flood_keys: u64,
    bytes_per_key: u64,
    tracked: u64,
    max_keys: u64,
}

/// A key of exactly `len` bytes (at least 12) ending in `n`.
fn key(len: usize, n: u64) -> String {
    let mut k = String::with_capacity(len);
    let _ = write!(k, "{n:x}-");
    while k.len() < len {
        k.push('k');
    }
    k.truncate(len);
    k
}

fn quotas() -> ClientQuotas {
    ClientQuotas::builder(
        "hostile_throttle",
        Quota::per_second(NonZeroU32::new(QUOTA_PER_SECOND).expect("non-zero")),
    )
    .build()
    .expect("a valid quota")
}

fn request(client: &str) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.headers_mut().insert(
        HeaderKey::DEFAULT,
        client.parse().expect("a valid header value"),
    );
    req
}

async fn flood_run(key_len: usize, flood: bool) -> Run {
    let before = alloc::allocated_bytes();
    let quotas = quotas();
    let layer = ThrottleLayer::builder("hostile_throttle", HeaderKey::default())
        .quotas(quotas.clone())
        .build()
        .expect("a valid layer");
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, BoxError>(())
    }));
    let mut ok = async |client: &str| -> bool {
        let svc = svc.ready().await.expect("always ready");
        svc.call(request(client)).await.is_ok()
    };
    let mut next_key = 0u64;
    // Before: the idle client's one request, the abuser's burst, and the table filled.
    ok("returning-client").await;
    while ok("abuser").await {}
    if flood {
        for ms in 0..5_000 {
            for _ in 0..PRE_FLOOD_KEYS / 5_000 {
                ok(&key(key_len, next_key)).await;
                next_key += 1;
            }
            if ms % 50 == 0 {
                ok("abuser").await;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }
    let flood_start = next_key;
    let (mut newcomer, mut newcomer_sent) = (0u32, 0u32);
    let (mut returning, mut returning_sent) = (0u32, 0u32);
    let mut abuser = 0u64;
    for ms in 0..RUN_MS {
        if flood {
            for _ in 0..FLOOD_PER_MS {
                ok(&key(key_len, next_key)).await;
                next_key += 1;
            }
        }
        if ms % 200 == 0 {
            newcomer_sent += 1;
            newcomer += u32::from(ok("newcomer").await);
        }
        if ms >= RUN_MS / 2 && ms % 200 == 100 {
            returning_sent += 1;
            returning += u32::from(ok("returning-client").await);
        }
        if ms % 50 == 0 {
            abuser += u64::from(ok("abuser").await);
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let tracked = quotas.tracked_keys() as u64;
    let after = alloc::allocated_bytes();
    drop(svc);
    drop(layer);
    Run {
        newcomer: f64::from(newcomer) / f64::from(newcomer_sent),
        returning: f64::from(returning) / f64::from(returning_sent),
        abuser,
        flood_keys: next_key - flood_start,
        bytes_per_key: after.saturating_sub(before) as u64 / tracked.max(1),
        tracked,
        max_keys: quotas.max_keys() as u64,
    }
}

/// Bytes per tracked client after 40,000 new keys of `key_len` bytes in 0.4 s (before the first
/// sweep is due) through quotas of 20,000 clients: the table full, or nearly (the 16-byte slots
/// do not depend on the table's size; a smaller one keeps the run short).
async fn memory_only(key_len: usize) -> u64 {
    let before = alloc::allocated_bytes();
    let quotas = ClientQuotas::builder(
        "hostile_throttle_memory",
        Quota::per_second(NonZeroU32::new(QUOTA_PER_SECOND).expect("non-zero")),
    )
    .max_keys(20_000)
    .build()
    .expect("a valid quota");
    for n in 0..40_000 {
        let _ = quotas.check(&key(key_len, n).into());
        if n % 100 == 0 {
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }
    let after = alloc::allocated_bytes();
    after.saturating_sub(before) as u64 / (quotas.tracked_keys() as u64).max(1)
}
