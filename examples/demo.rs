//! The demo: congestion collapse without backstop, and what backstop's stacks change.
//!
//! The seeds' web application ([`WebApp`]): a service with 10 workers handles 100 requests per
//! second. Demand is 50/s, rises to 110/s, then to 200/s for 30 s, then falls back to 50/s.
//! Users give up after 1 s and reload. The same load, with the same seed, runs against:
//!
//! - **naive**: an unbounded FIFO queue; clients wait 300 ms per attempt and retry 3 times
//!   with exponential backoff;
//! - **timeouts only**: backstop's deadline-propagating timeouts and nothing else, to show what
//!   they do alone;
//! - **backstop**: backstop's client and server stacks (see `support/web_stacks.rs`): deadline propagation,
//!   a retry budget (at most one retry, 1% of successes), and an adaptive LIFO queue in front of
//!   the workers.
//!
//! It prints a table, writes SVG plots into `target/backstop-demo/`, and ends with one line:
//! `summary: naive_goodput=F backstop_goodput=F naive_recovery_s=S backstop_recovery_s=S`
//! (goodput as a fraction of capacity during the surge; recovery in simulated seconds, a lower
//! bound when the run ended before recovery, as the table's `>=` says).
//!
//! Run it with `cargo run --release --example demo`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::BoxError;
use backstop::metrics::{LittleMeter, LittleReport, LittleSnapshot};
use backstop::sim::{SimReport, WebApp, goodput_table, table};
use plotters::prelude::*;

#[path = "support/web_stacks.rs"]
mod web_stacks;
use web_stacks::WebStacks;

/// Runs the story with `stacks` in a paused runtime of its own, and reads the server's
/// Little's-law meter on the simulated clock at the end of the run.
fn run(stacks: &WebStacks, name: &str) -> Result<(SimReport, Option<LittleReport>), BoxError> {
    let meter: Arc<Mutex<Option<(LittleMeter, LittleSnapshot)>>> = Arc::default();
    let slot = meter.clone();
    let scenario = stacks.scenario(&WebApp::default(), name, move |m| {
        *slot.lock().unwrap() = Some((m.clone(), m.snapshot()));
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    Ok(rt.block_on(async {
        let report = scenario.run_async().await;
        let little = meter
            .lock()
            .unwrap()
            .as_ref()
            .map(|(m, start)| m.snapshot().since(start));
        (report, little)
    }))
}

fn main() -> Result<(), BoxError> {
    let wall = std::time::Instant::now();
    let story = WebApp::default();
    let naive = story.naive()?.run();
    let (timeouts, _) = run(&WebStacks::new(false)?, "timeouts only")?;
    let full = WebStacks::new(true)?;
    let (backstop, little) = run(&full, "backstop")?;
    let wall = wall.elapsed();

    println!(
        "backstop demo: {} workers x {:?} mean = {:.0} req/s; demand 50 -> 110 -> 200 (surge, {}-{} s) -> 50 req/s; users give up after {:?} and reload (3x)\n",
        WebApp::WORKERS,
        WebApp::SERVICE_MEAN,
        naive.capacity_rps,
        naive.summary.surge.map_or(0, |s| s.0.as_secs()),
        naive.summary.surge.map_or(0, |s| s.1.as_secs()),
        WebApp::PATIENCE,
    );
    println!("{}", table(&[&naive, &timeouts, &backstop]));
    println!("answers in time, per 5 s:");
    println!("{}", goodput_table(&[&naive, &timeouts, &backstop], 5));
    println!("per hop (work and wasted work, Little's law check):");
    for r in [&naive, &timeouts, &backstop] {
        print!("[{}]\n{}", r.name, r.hop_table());
    }
    println!(
        "  in_flight: time-average requests in the server (queue and service); little: arrival \
         rate x mean latency of the requests that left / in_flight - 1 (Little's law, 0 when it \
         holds); it is negative when many requests are still inside at the end (at_end): their \
         time counts in in_flight but has no latency yet"
    );
    if let Some(l) = little {
        println!(
            "\nbackstop's LittleLayer on the web server over the run (outermost, so it counts the queue's waiters too): {} arrivals ({:.1}/s), {:.1} in flight on average, mean latency {:.0} ms; average concurrency / {} workers (waiters included, so it can exceed 1) = {:.2}",
            l.arrivals,
            l.arrival_rate,
            l.average_concurrency,
            l.mean_latency.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            WebApp::WORKERS,
            l.utilization.unwrap_or(0.0),
        );
    }

    let dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("target/backstop-demo");
    std::fs::create_dir_all(dir)?;
    let runs = [&naive, &timeouts, &backstop];
    plot_goodput(&dir.join("goodput.svg"), &runs)?;
    plot_latency(&dir.join("latency.svg"), &runs)?;
    println!("\nplots: target/backstop-demo/goodput.svg target/backstop-demo/latency.svg");
    println!(
        "simulated {} runs of {:?} in {:.2?} wall time",
        runs.len(),
        naive.run_for,
        wall
    );

    let (n, b) = (&naive.summary, &backstop.summary);
    println!();
    verdict(&naive);
    verdict(&timeouts);
    verdict(&backstop);
    let budget = full.budget.stats();
    println!(
        "backstop's retry budget: {} retries sent, {} denied over the run",
        budget.granted - budget.refunded,
        budget.denied
    );
    if timeouts.summary.surge_goodput_fraction < 0.3 {
        println!(
            "note: timeouts alone end the stuck state (the server drops queued requests whose \
             caller has left) but keep goodput low during the surge: a FIFO queue still serves \
             the oldest requests, whose deadline is nearly up. The LIFO queue serves the newest."
        );
    }
    println!(
        "summary: naive_goodput={:.2} backstop_goodput={:.2} naive_recovery_s={:.0} backstop_recovery_s={:.0}",
        n.surge_goodput_fraction,
        b.surge_goodput_fraction,
        n.recovery.seconds().unwrap_or(f64::NAN),
        b.recovery.seconds().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// One honest sentence per run.
fn verdict(r: &SimReport) {
    let s = &r.summary;
    let surge = if s.surge_goodput_fraction < 0.3 {
        "collapsed during the surge"
    } else if s.surge_goodput_fraction < 0.9 {
        "degraded during the surge"
    } else {
        "kept goodput at capacity during the surge"
    };
    let after = if s.recovery.recovered() {
        format!("recovered {} after it", s.recovery)
    } else {
        format!(
            "did NOT recover before the run ended ({:.0} s is a lower bound)",
            s.recovery.seconds().unwrap_or(0.0)
        )
    };
    println!(
        "{}: {} ({:.2} of capacity, {:.1} attempts per request, {:.0}% of work wasted) and {}",
        r.name,
        surge,
        s.surge_goodput_fraction,
        s.attempts_per_request,
        100.0 * s.wasted_fraction(),
        after
    );
}

const COLORS: [RGBColor; 3] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 80, 200),
    RGBColor(20, 150, 60),
];

/// Contiguous stretches of the points that exist, so gaps show as gaps.
fn stretches(points: impl Iterator<Item = (f64, Option<f64>)>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (x, y) in points {
        match y {
            Some(y) => out.last_mut().expect("never empty").push((x, y)),
            None if out.last().is_some_and(|s| !s.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn plot_goodput(path: &Path, runs: &[&SimReport]) -> Result<(), BoxError> {
    let end = runs[0].run_for.as_secs_f64();
    let top = runs[0].series.iter().map(|b| b.offered).max().unwrap_or(1) as f64 * 1.15;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("goodput (answers in time per second)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("requests per second")
        .draw()?;
    let offered: Vec<(f64, f64)> = runs[0]
        .series
        .iter()
        .map(|b| (b.start.as_secs_f64() + 0.5, b.offered as f64))
        .collect();
    chart
        .draw_series(LineSeries::new(offered, BLACK.mix(0.4)))?
        .label("offered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    let cap = runs[0].capacity_rps;
    chart
        .draw_series(LineSeries::new([(0.0, cap), (end, cap)], BLACK.mix(0.2)))?
        .label("capacity")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.2)));
    for (r, color) in runs.iter().zip(COLORS) {
        let points: Vec<(f64, f64)> = r
            .series
            .iter()
            .map(|b| (b.start.as_secs_f64() + 0.5, b.goodput as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(r.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(path: &Path, runs: &[&SimReport]) -> Result<(), BoxError> {
    let end = runs[0].run_for.as_secs_f64();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency of answers in time: p50 (solid), p99 (thin); gaps: no answer in time",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..end, 0f64..1000f64)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("milliseconds")
        .draw()?;
    for (r, color) in runs.iter().zip(COLORS) {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let x = |b: &backstop::sim::Bucket| b.start.as_secs_f64() + 0.5;
        let p50 = stretches(r.series.iter().map(|b| (x(b), ms(b.p50))));
        let p99 = stretches(r.series.iter().map(|b| (x(b), ms(b.p99))));
        for (i, s) in p50.into_iter().enumerate() {
            let series = chart.draw_series(LineSeries::new(s, color.stroke_width(2)))?;
            if i == 0 {
                series.label(r.name.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        for s in p99 {
            chart.draw_series(LineSeries::new(s, color.mix(0.5)))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
