//! PID admission control over real HTTP: a controller holds the queue's expected wait near its
//! setpoint by admitting a share of requests, and lets everyone in again when the surge ends.
//!
//!     cargo run --release --example pattern_pid_admission
//!
//! Server on 127.0.0.1 (port picked at run time): 4 workers x 20 ms = 200 requests/s, behind
//! PID admission (setpoint: 20 ms of expected wait in the LIFO queue) → LIFO queue → deadline.
//! Load: 3x capacity for 3 s, then 0.5x for 1.5 s; the controller's state every 0.5 s.

#[path = "support/http/mod.rs"]
mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backstop::BoxError;
use support::client::{ClientStack, transport};
use support::load::drive;
use support::server::{PidMode, QUEUE_DELAY_SETPOINT, ServerStack, Workers, start};
use tokio::time::Instant;

const WORKERS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prometheus = support::prometheus();
    let stack = ServerStack {
        throttle: None, // the controller refuses requests itself here (503), no whole-client shedding
        ..ServerStack::with_pid(WORKERS, PidMode::Admission)?
    };
    let server = start(
        Workers::new(WORKERS, Duration::from_millis(20)),
        stack,
        prometheus,
    )
    .await?;
    let capacity = server.workers.capacity();
    let pid = server.pid.clone().expect("a controller");
    let client = ClientStack::plain(Duration::from_secs(1)).build(transport())?;
    println!(
        "capacity {capacity:.0}/s; setpoint {:.0} ms of expected queue wait; 3x for 3 s, then 0.5x\n",
        QUEUE_DELAY_SETPOINT * 1e3
    );
    println!(
        "{:>6} {:>9} {:>11} {:>9} {:>12}",
        "t (s)", "admit %", "served /s", "waiting", "denied so far"
    );

    let watch = {
        let (pid, stats, queue) = (
            pid.clone(),
            server.workers.stats.clone(),
            server.queue.clone(),
        );
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0;
            let mut rows = Vec::new();
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let done = stats.completed.load(Relaxed);
                let waiting = queue.as_ref().map_or(0, |q| q.stats().waiting);
                let p = pid.admission_probability();
                println!(
                    "{:>6.1} {:>8.0}% {:>11.0} {:>9} {:>12}",
                    start.elapsed().as_secs_f64(),
                    p * 100.0,
                    (done - last) as f64 / 0.5,
                    waiting,
                    pid.denied()
                );
                rows.push(p);
                last = done;
            }
            rows
        })
    };
    let url = server.url("/work");
    let bound = Duration::from_secs(10);
    let surge = drive(
        &client,
        &url,
        3.0 * capacity,
        Duration::from_secs(3),
        2000,
        bound,
    )
    .await;
    let calm = drive(
        &client,
        &url,
        0.5 * capacity,
        Duration::from_millis(1500),
        500,
        bound,
    )
    .await;
    let rows = watch.await?;
    for t in [&surge, &calm] {
        assert_eq!(t.outcomes(), t.sent, "one outcome per request");
    }
    let surge_p = rows[1..6].iter().sum::<f64>() / 5.0;
    println!(
        "\nDuring the surge the controller admitted about {:.0}% of requests (3x load needs about 33%), \
         goodput {:.2} of capacity with p99 {} ms. When the surge ends the integral term \
         unwinds over about a second: {:.0}% are admitted at the end, and {} of the {} calm \
         requests were served (the rest were refused while it unwound).",
        surge_p * 100.0,
        surge.goodput() / capacity,
        surge.ok_quantile(0.99).as_millis(),
        rows.last().copied().unwrap_or(1.0) * 100.0,
        calm.ok,
        calm.sent
    );
    println!(
        "summary: surge_admission={surge_p:.2} surge_goodput={:.2} calm_served={:.2} final_admission={:.2}",
        surge.goodput() / capacity,
        calm.ok as f64 / calm.sent as f64,
        rows.last().copied().unwrap_or(1.0)
    );
    Ok(())
}
