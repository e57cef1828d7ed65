//! A client-wide token bucket over real HTTP: every request of a client, whichever service
//! clone sends it, takes a token from one bucket, so the client as a whole keeps to its rate.
//!
//!     cargo run --release --example pattern_token_bucket
//!
//! Server on 127.0.0.1 (port picked at run time), 16 workers x 5 ms. One client with a bucket
//! of 50 requests/s (burst 10); two parts of the program each send 40/s for 2 s through their
//! own clone of the client stack.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use backstop::token_bucket::TokenBucket;
use support::client::{BucketSpec, ClientStack, transport};
use support::load::drive;
use support::server::{ServerStack, Workers, start};

const RATE: f64 = 50.0;
const EACH: f64 = 40.0;
const RUN: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prometheus = support::prometheus();
    let server = start(
        Workers::new(16, Duration::from_millis(5)),
        ServerStack::none(),
        prometheus,
    )
    .await?;
    let bucket = TokenBucket::builder("http_client")
        .rate(RATE)
        .capacity(10.0)
        .build()?;
    let stack = ClientStack {
        bucket: Some(BucketSpec::Shared(bucket.clone())),
        ..ClientStack::plain(Duration::from_secs(1))
    };
    let client = stack.build(transport())?;
    let (a, b) = (client.clone(), client); // two clones, one bucket
    let url = server.url("/work");
    let bound = Duration::from_secs(10);
    let max = (EACH * RUN.as_secs_f64()) as u64;
    let (ta, tb) = tokio::join!(
        drive(&a, &url, EACH, RUN, max, bound),
        drive(&b, &url, EACH, RUN, max, bound)
    );
    assert_eq!(
        ta.outcomes() + tb.outcomes(),
        ta.sent + tb.sent,
        "one outcome each"
    );
    let reached = server.workers.stats.arrived.load(Relaxed);
    let seconds = ta.sending.max(tb.sending).as_secs_f64();

    println!(
        "bucket: {RATE}/s, burst 10; two clones of the client each offer {EACH}/s for {} s\n",
        RUN.as_secs()
    );
    for (name, t) in [("clone A", &ta), ("clone B", &tb)] {
        println!(
            "{name}: sent {:>3}, answered {:>3}, refused by the bucket before sending {:>3}",
            t.sent, t.ok, t.client_overload
        );
    }
    println!(
        "\nThe server received {reached} requests: {:.0}/s, the bucket's {RATE}/s plus its burst, \
         although the two clones together offered {:.0}/s. A per-clone limit (tower's RateLimit keeps \
         its state per service) would have let {:.0}/s through.",
        reached as f64 / seconds,
        2.0 * EACH,
        2.0 * EACH.min(RATE)
    );
    println!(
        "summary: offered_per_s={:.0} reached_per_s={:.1} bucket_rate={RATE} refused_locally={}",
        2.0 * EACH,
        reached as f64 / seconds,
        ta.client_overload + tb.client_overload
    );
    Ok(())
}
