//! One quota per client for a whole fleet, kept in Redis, spent at local speed (feature
//! `redis`).
//!
//! [`ClientQuotas`](crate::throttle::ClientQuotas) holds a client to its rate *per process*: a
//! tenant sold 200 requests/s gets 200/s from each of 40 servers behind a balancer.
//! [`FleetQuotas`] holds it to 200/s across all of them. It is a
//! [`QuotaStore`](crate::throttle::QuotaStore), so the throttle takes it where it takes
//! `ClientQuotas`: `ThrottleLayer::builder(name, key).quotas(fleet)`.
//!
//! # The design: leases
//! The fleet's state is one token bucket per client in Redis (or Valkey), updated by one Lua
//! script that reads Redis's own clock (`TIME`), so the processes' clocks need not agree. A
//! process does not ask Redis per request: it takes tokens in **leases** and spends them
//! locally. A lease is sized from the client's recent rate at this process (the requests of
//! the last [`lease_period`](FleetQuotasBuilder::lease_period), 200 ms by default), at least 1,
//! at most [`max_lease`](FleetQuotasBuilder::max_lease) (64) and the quota's burst; the next
//! one is asked for, on its own task, when half of the last is spent, so it usually arrives
//! before the tokens run out. Unspent tokens lapse after
//! [`lease_ttl`](FleetQuotasBuilder::lease_ttl) (1 s). When Redis has fewer tokens than asked
//! it grants what it has and says how long until the bucket holds a lease again: the process
//! refuses the client until then (with that wait as `retry_after`) and does not call.
//!
//! A request finding no lease (a client's first request, or a lease still on its way) is
//! decided on the process's **local share**: the quota ÷ the processes Redis counts as serving
//! that client (or [`expected_processes`](FleetQuotasBuilder::expected_processes) before Redis
//! has ever answered), burst likewise split. What the share admits while Redis answers is
//! charged to the fleet's bucket at the next call, so the fleet's long-run rate is the quota.
//!
//! # What it costs
//! No request waits on Redis: the decision is a hash, a lock on one of 64 shards and a few
//! integer operations. Round trips are one per lease: at a client's rate `r` per process and
//! the default 200 ms period, a lease is `clamp(0.2·r, 1, 64)` tokens, so a process makes
//! about `r / lease` calls per second for that client:
//!
//! | rate at one process | lease | Redis round trips per request |
//! |---|---|---|
//! | ≤ 5/s | 1 | 1 (each off the request path) |
//! | 50/s | 10 | 0.1 |
//! | 100/s | 20 | 0.05 |
//! | ≥ 320/s | 64 | ≤ 1/64 ≈ 0.016 |
//!
//! A client over its quota costs less: refused requests make no call, and a dry bucket is asked
//! again only when a lease has built up. `examples/fleet_quota.rs` measures it across 4
//! processes.
//!
//! # Consistency: how far over the quota the fleet can go
//! Every token spent from a lease was taken from the bucket, and every request admitted on the
//! local share while Redis answers is charged to it at the next call (the bucket may go below
//! zero: the fleet then waits until the refill has paid the debt). So over any window `W` in
//! which Redis answers, a fleet of `P` processes admits at most
//!
//! `rate·W + burst` (the bucket) `+ P·max_lease` (leases taken before the window, spent in it)
//! `+ burst + rate·call_timeout` (shares spent but not charged yet: each process's share is
//! `1/P` of the burst and of the rate, and a call is out at most `call_timeout`).
//!
//! With the defaults, a quota of 200/s (burst 200) and 4 processes: `200·W + 200 + 256 + 220`.
//! Over a long window the excess tends to zero: `examples/fleet_quota.rs` measures 1.003× the
//! quota over 8 s. While Redis fails, each process holds to its share (below).
//!
//! # When Redis fails
//! A call that errs, answers garbage (anything but the script's three integers in range), or
//! takes longer than [`call_timeout`](FleetQuotasBuilder::call_timeout) (100 ms) puts the
//! process on its local share for every client: the quota ÷ the processes it last knew of.
//! The fleet then admits about the quota when the live count was right (a process that died
//! leaves its share unused; one that joined during the outage adds its own). No request fails
//! or waits for Redis's sake, requests so decided are counted in
//! `backstop_fleet_quota_fallback_requests_total`, and `backstop_fleet_quota_degraded` is 1.
//! One probe goes out every [`retry_every`](FleetQuotasBuilder::retry_every) (500 ms); the
//! first answer puts the process back on leases. Admissions on the share during the failure are
//! not charged afterwards: a Redis that comes back does not start by refusing everyone. A
//! Redis unreachable at startup is the same case: the handle builds (it never connects at
//! build) and serves from the local share.
//!
//! # Cancellation
//! The decision is made in the throttle's `call`, before the inner service sees the request,
//! and nothing is held while the request runs: a dropped response future has nothing to give
//! back. As with `ClientQuotas`, an admitted request that is then cancelled has spent its token.
//!
//! # Memory
//! In Redis, per client: a hash of two fields (`t`, `n`) and a sorted set of the processes
//! serving it (a 16-character id each), named by a 128-bit fingerprint of the key, so a 1 MiB
//! key costs what a 3-byte key costs: 152 bytes for the bucket, 152 for the set of one process
//! and about 27 more per further process (232 for 4), as Redis 7's `MEMORY USAGE` reports in
//! `tests/fleet_quota.rs`. Both expire when dropping them changes no
//! decision: the bucket when it would be full again, the set after
//! [`live_window`](FleetQuotasBuilder::live_window) of silence. In the process: a table of at
//! most [`max_keys`](FleetQuotasBuilder::max_keys) clients (10,000), allocated at build, 72
//! bytes a client plus the hash map's spare slots (at most 2×, and a control byte); a new
//! client that finds its shard full replaces the one with the fewest requests, so one-shot
//! keys replace each other and leave the busy clients alone.
//!
//! # Example
//! Redis need not be up for the handle to build and serve: here nothing listens at the URL, so
//! the process serves from its local share.
//! ```
//! use backstop::fleet::FleetQuotas;
//! use backstop::throttle::{ClientId, Quota, ThrottleLayer};
//! use backstop::BoxError;
//! use std::num::NonZeroU32;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let quota = Quota::per_second(NonZeroU32::new(200).unwrap());
//! let fleet = FleetQuotas::builder("api", "redis://127.0.0.1:1/", quota).build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         ThrottleLayer::builder("throttle", |tenant: &&str| Some(ClientId::from(*tenant)))
//!             .quotas(fleet.clone())
//!             .build()?,
//!     )
//!     .service_fn(|_tenant: &str| async { Ok::<_, BoxError>("ok") });
//! assert_eq!(svc.ready().await?.call("tenant-a").await?, "ok");
//! # Ok(())
//! # }
//! ```
mod quotas;
mod script;
mod table;

pub use self::quotas::{FleetQuotas, FleetQuotasBuilder, FleetStats};
