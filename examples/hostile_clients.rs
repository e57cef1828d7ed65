//! Hostile and careless traffic against backstop's own rule, "overload must make the system do
//! less work, never more": each breach an audit found, measured again.
//!
//!     cargo run --release --example hostile_clients
//!
//! - a flood of 10⁵ new client keys while a well-behaved client (within its quota) arrives: the
//!   share of its requests admitted, and the throttle's memory per tracked key with 1 KiB keys;
//! - a burst of 300 requests against a server that is already full and answering "overloaded":
//!   how many duplicates the hedge layer sends;
//! - a chain of 4 services, each retrying through its own budget, with the bottom failing: the
//!   most calls one request makes at the bottom, and bottom calls per request at 10 requests/s;
//! - every builder given extreme values (0, negative, NaN, infinities, `Duration::MAX`,
//!   `u64::MAX`): how many cases panic instead of building a working layer or naming the field.
//!
//! All on virtual time (tokio's paused clock): the run takes a few seconds of wall time and gives
//! the same figures every time. The last line is the summary the project's scripts read.

#[path = "support/hostile/mod.rs"]
mod hostile;

#[global_allocator]
static ALLOC: hostile::alloc::CountingAlloc = hostile::alloc::CountingAlloc;

fn main() {
    let throttle = hostile::throttle::measure();
    println!(
        "throttle: a well-behaved client got {:.1}% of its requests in while {} new keys flooded in; \
         {} bytes per tracked key (1 KiB keys)",
        throttle.newcomer_admitted * 100.0,
        throttle.flood_keys,
        throttle.bytes_per_key
    );
    let burst_hedge_extra = hostile::hedge::measure();
    println!(
        "hedge: {:.3} duplicates per request in a burst of 300 against a full server",
        burst_hedge_extra
    );
    let retry = hostile::retry::measure();
    println!(
        "retry: at most {} calls at the bottom of a 4-level chain for one request; {:.3} bottom \
         calls per request at 10 requests/s",
        retry.max_bottom_calls, retry.amp_10rps
    );
    let config_panics = hostile::config::measure();
    println!("config: {config_panics} builder cases panicked");
    println!(
        "summary: newcomer_admitted={:.3} flood_keys={} bytes_per_key={} burst_hedge_extra={:.3} \
         max_bottom_calls={} amp_10rps={:.3} config_panics={}",
        throttle.newcomer_admitted,
        throttle.flood_keys,
        throttle.bytes_per_key,
        burst_hedge_extra,
        retry.max_bottom_calls,
        retry.amp_10rps,
        config_panics
    );
}
