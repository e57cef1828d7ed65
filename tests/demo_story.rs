//! The demo's story, held to its figures: the naive stacks collapse and stay collapsed (see
//! tests/sim_harness.rs), backstop's stacks keep goodput at capacity and recover at once, and
//! the same seed gives the same numbers even with retry jitter in the stacks.

#[path = "../examples/support/web_stacks.rs"]
mod web_stacks;

use backstop::sim::{SimReport, WebApp};
use web_stacks::WebStacks;

fn run(full: bool) -> SimReport {
    WebStacks::new(full)
        .unwrap()
        .scenario(&WebApp::default(), "backstop", |_| {})
        .unwrap()
        .run()
}

#[test]
fn backstops_stacks_keep_goodput_through_the_surge_and_recover_at_once() {
    let report = run(true);
    let s = &report.summary;
    assert!(
        s.surge_goodput_fraction >= 0.9,
        "surge goodput {:.2} of capacity",
        s.surge_goodput_fraction
    );
    assert!(s.recovery.recovered(), "{}", report.table());
    assert!(s.recovery.seconds().unwrap() <= 5.0, "{}", report.table());
    assert!(
        s.wasted_fraction() < 0.05,
        "wasted {:.2}",
        s.wasted_fraction()
    );
    // Same seed, same numbers, retry jitter and all.
    assert_eq!(report.table(), run(true).table());
}

#[test]
fn timeouts_alone_end_the_stuck_state_but_not_the_surge_collapse() {
    let s = run(false).summary;
    assert!(s.recovery.recovered());
    assert!(
        s.surge_goodput_fraction < 0.3,
        "{:.2}",
        s.surge_goodput_fraction
    );
}
