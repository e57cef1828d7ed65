//! The seeds' throttling experiment on the simulation harness: random per-request throttling
//! against whole-client throttling, as the throttled fraction `p` goes from 0 to 100%.
//!
//! Users make chains of 3 dependent calls to one server; the naive client tries each call up to
//! 3 times (2 retries) and gives up on the chain when a call still fails. The server throttles
//! with backstop's `ThrottleLayer` and a `ShedFraction` set to `p`, keyed either by the request
//! (every attempt a fresh key: random per-request throttling) or by the client (whole-client
//! throttling). A third run keeps whole-client throttling and replaces the naive retries with
//! backstop's `RetryLayer`, which never retries a refusal. The server has 10× the capacity
//! needed, so only throttling refuses anything.
//!
//! For each `p` it prints, relative to `p` = 0 in the same mode: the requests reaching the
//! server (load), the requests the throttle let through (admitted) and the chains completed
//! (done). It writes `target/backstop-throttle/load.svg` and ends with one line:
//! `summary: random_peak=X whole_client_peak=X backstop_peak=X` (peak load over the sweep,
//! relative to p = 0).
//!
//! Run: `cargo run --release --example throttle_sweep`.

use std::path::Path;
use std::time::Duration;

use backstop::BoxError;
use backstop::retry::{RetryBudget, RetryLayer};
use backstop::sim::{
    Arrivals, CallPolicy, Chain, ClientBehavior, Hop, LoadProfile, RetryPolicy, Scenario,
    ServiceTime, SimRequest, SimService,
};
use backstop::throttle::{ClientId, ShedFraction, ThrottleLayer};
use plotters::prelude::*;
use tower::{Layer, ServiceBuilder};

/// How the server throttles and how the clients retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every attempt is its own key; naive client retries.
    Random,
    /// The client id is the key; naive client retries.
    WholeClient,
    /// The client id is the key; backstop's retry layer in each client.
    Backstop,
}

impl Mode {
    /// All modes, in table order.
    pub const ALL: [Mode; 3] = [Mode::Random, Mode::WholeClient, Mode::Backstop];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Random => "random",
            Mode::WholeClient => "whole_client",
            Mode::Backstop => "backstop",
        }
    }
}

/// What one run at one `p` measured.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// The throttled fraction.
    pub p: f64,
    /// Requests that reached the server (before the throttle).
    pub load: u64,
    /// Requests the throttle admitted.
    pub admitted: u64,
    /// Chains completed.
    pub done: u64,
    /// Logical requests (chains) offered.
    pub offered: u64,
}

/// The model's size: logical requests per second, seconds, clients.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Chains started per second.
    pub rps: f64,
    /// Simulated seconds.
    pub seconds: u64,
    /// Distinct clients.
    pub clients: u32,
}

/// Runs one point of the sweep.
pub fn run_point(mode: Mode, p: f64, size: Size, seed: u64) -> Result<Point, BoxError> {
    // Epoch 0 from now; runs are far shorter than an epoch, so the choice is fixed per run.
    let shed = ShedFraction::builder("sweep")
        .seed(0x5eed)
        .epoch_origin(tokio::time::Instant::now())
        .initial(p)
        .build()?;
    let by_client = mode != Mode::Random;
    let key = move |r: &SimRequest| {
        Some(if by_client {
            ClientId::from(r.client)
        } else {
            ClientId::from(r.id)
        })
    };
    let throttle = ThrottleLayer::builder("throttle", key).shed(shed).build()?;
    let server = Hop::new("api", 16, ServiceTime::Fixed(Duration::from_millis(2)))
        .stack(move |server| SimService::new(throttle.layer(server)));
    let retry = match mode {
        Mode::Random | Mode::WholeClient => RetryPolicy::Naive {
            retries: 2,
            backoff: Duration::from_millis(5),
            jitter: 0.5,
        },
        Mode::Backstop => RetryPolicy::Stack,
    };
    let behavior = ClientBehavior {
        clients: size.clients,
        patience: Duration::from_secs(10),
        call: CallPolicy {
            attempt_timeout: None,
            retry,
        },
        reload: None,
        chain: Chain {
            calls: 3,
            chain_retries: 0,
        },
    };
    let budget = RetryBudget::builder("clients").build()?;
    let mut scenario = Scenario::builder(format!("{} p={p:.2}", mode.name()))
        .seed(seed)
        .arrivals(Arrivals::Poisson)
        .profile(LoadProfile::new().step(Duration::from_secs(size.seconds), size.rps))
        .clients(behavior)
        .hop(server);
    if mode == Mode::Backstop {
        scenario = scenario.client_stack(move |front| {
            let retry = RetryLayer::builder(budget.clone())
                .retry_non_idempotent()
                .build()
                .expect("valid retry layer");
            SimService::new(ServiceBuilder::new().layer(retry).service(front))
        });
    }
    let report = scenario.build()?.run();
    let hop = &report.hops[0];
    Ok(Point {
        p,
        load: hop.sent,
        admitted: hop.arrivals,
        done: report.summary.succeeded,
        offered: report.summary.offered,
    })
}

/// Runs every mode over `ps`.
pub fn sweep(ps: &[f64], size: Size, seed: u64) -> Result<Vec<(Mode, Vec<Point>)>, BoxError> {
    Mode::ALL
        .iter()
        .map(|&mode| {
            let points = ps
                .iter()
                .map(|&p| run_point(mode, p, size, seed))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((mode, points))
        })
        .collect()
}

/// Requests per chain under random throttling with 3 tries per call, relative to 3: a call
/// makes 1 + p + p^2 attempts, and the chain reaches its next call with q = 1 - p^3.
pub fn random_model(p: f64) -> f64 {
    let q = 1.0 - p * p * p;
    (1.0 + p + p * p) * (1.0 + q + q * q) / 3.0
}

/// `x / base`, 0 when the base is 0.
pub fn ratio(x: u64, base: u64) -> f64 {
    if base == 0 {
        0.0
    } else {
        x as f64 / base as f64
    }
}

/// Peak load over the sweep relative to the first point (p = 0).
pub fn peak(points: &[Point]) -> f64 {
    let base = points[0].load;
    points
        .iter()
        .map(|pt| ratio(pt.load, base))
        .fold(0.0, f64::max)
}

#[allow(dead_code)] // the test includes this file for the model, not for main
fn main() -> Result<(), BoxError> {
    let size = Size {
        rps: 200.0,
        seconds: 30,
        clients: 1000,
    };
    let ps: Vec<f64> = (0..=20).map(|i| f64::from(i) * 0.05).collect();
    let runs = sweep(&ps, size, 17)?;

    println!(
        "chains of 3 calls, {} chains/s for {} s from {} clients; load, admitted and done are relative to p = 0 in the same mode",
        size.rps, size.seconds, size.clients
    );
    print!("{:>5} |", "p");
    for (mode, _) in &runs {
        print!(" {:^23} |", mode.name());
    }
    println!(" {:>5} {:>6}", "1-p", "model");
    print!("{:>5} |", "");
    for _ in &runs {
        print!(" {:>7} {:>7} {:>7} |", "load", "admit", "done");
    }
    println!();
    for (i, p) in ps.iter().enumerate() {
        print!("{:>4.0}% |", p * 100.0);
        for (_, points) in &runs {
            let (pt, base) = (points[i], points[0]);
            print!(
                " {:>7.3} {:>7.3} {:>7.3} |",
                ratio(pt.load, base.load),
                ratio(pt.admitted, base.admitted),
                ratio(pt.done, base.done)
            );
        }
        println!(" {:>5.2} {:>6.3}", 1.0 - p, random_model(*p));
    }
    println!(
        "model: the plain model's random-throttling load, (1 + p + p^2)(1 + q + q^2) / 3 with q = 1 - p^3"
    );
    for (mode, points) in &runs {
        let base = points[0];
        println!(
            "{:>12} at p=0: {} chains offered, {} requests reached the server ({:.2} per chain)",
            mode.name(),
            base.offered,
            base.load,
            ratio(base.load, base.offered)
        );
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/backstop-throttle");
    std::fs::create_dir_all(&dir)?;
    plot(&dir.join("load.svg"), &runs)?;
    println!("\nplot: target/backstop-throttle/load.svg");

    let peak_of = |m: Mode| {
        runs.iter()
            .find(|(mode, _)| *mode == m)
            .map_or(0.0, |(_, points)| peak(points))
    };
    println!(
        "summary: random_peak={:.2} whole_client_peak={:.2} backstop_peak={:.2}",
        peak_of(Mode::Random),
        peak_of(Mode::WholeClient),
        peak_of(Mode::Backstop)
    );
    Ok(())
}

#[allow(dead_code)]
fn plot(path: &Path, runs: &[(Mode, Vec<Point>)]) -> Result<(), BoxError> {
    let top = runs
        .iter()
        .map(|(_, points)| peak(points))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "requests reaching the server vs throttled fraction (1.0 = unthrottled)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..100f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("throttled fraction p (%)")
        .y_desc("load relative to p = 0")
        .draw()?;
    let colors = [RED, BLUE, GREEN];
    for ((mode, points), color) in runs.iter().zip(colors) {
        let base = points[0];
        let load: Vec<(f64, f64)> = points
            .iter()
            .map(|pt| (pt.p * 100.0, ratio(pt.load, base.load)))
            .collect();
        chart
            .draw_series(LineSeries::new(load, color.stroke_width(2)))?
            .label(format!("{} load", mode.name()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        let admitted: Vec<(f64, f64)> = points
            .iter()
            .map(|pt| (pt.p * 100.0, ratio(pt.admitted, base.admitted)))
            .collect();
        chart
            .draw_series(LineSeries::new(admitted, color.mix(0.4)))?
            .label(format!("{} admitted", mode.name()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.mix(0.4)));
    }
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (100.0, 0.0)], BLACK.mix(0.3)))?
        .label("1 - p")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
