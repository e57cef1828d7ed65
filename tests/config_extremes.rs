//! No builder accepts a value that later panics or misbehaves.
//!
//! Every public builder's numeric and duration fields are tried with extreme values (0, -1, NaN,
//! ±∞, tiny positive, `Duration::ZERO`, `Duration::MAX`, `u32::MAX`, `u64::MAX`, `usize::MAX`)
//! and ordinary ones. Each case either builds a layer that serves 100 requests on paused time
//! (some with deadlines), each with one outcome, or is refused with a `ConfigError` naming the
//! field. The case table lives in `examples/support/hostile/config.rs`, so the hostile-clients
//! example counts the same cases (`config_panics`).
#![cfg(all(feature = "http", feature = "sim"))]

#[path = "../examples/support/hostile/config.rs"]
mod config;

use std::time::Duration;

use config::{BUILDERS, Case, KNOWN_OPEN, Value, Verdict};
use proptest::prelude::*;
use proptest::sample::Index;

/// The cases that failed and are not on the known-open list, one line each.
fn failures<'a>(results: impl IntoIterator<Item = &'a (Case, Verdict)>) -> Vec<String> {
    results
        .into_iter()
        .filter(|(case, verdict)| verdict.is_bad() && case.known_open().is_none())
        .map(|(case, verdict)| format!("{}: {verdict:?}", case.label()))
        .collect()
}

/// Every field of every builder, one extreme value at a time.
#[test]
fn no_single_extreme_value_panics_or_misbehaves() {
    let results = config::run_all();
    // The table is not empty and really builds and refuses things.
    let served = results
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Served(_)))
        .count();
    let refused = results
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Refused(_)))
        .count();
    assert!(
        served > 100 && refused > 100,
        "{served} served, {refused} refused"
    );
    let bad = failures(&results);
    assert!(
        bad.is_empty(),
        "{} of {} cases panicked or misbehaved:\n{}",
        bad.len(),
        results.len(),
        bad.join("\n")
    );
}

/// The known-open list names real cases: each entry matches a case of the table, and the test
/// says which of them are still open (the lead empties the list as fixes land).
#[test]
fn the_known_open_list_names_real_cases() {
    let cases = config::cases();
    for open in KNOWN_OPEN {
        let matching: Vec<&Case> = cases
            .iter()
            .filter(|c| c.known_open().is_some_and(|k| std::ptr::eq(k, open)))
            .collect();
        assert!(
            !matching.is_empty(),
            "KNOWN_OPEN entry {}.{} matches no case",
            open.builder,
            open.field
        );
        let still: Vec<String> = matching
            .iter()
            .filter(|c| c.run().is_bad())
            .map(|c| c.label())
            .collect();
        eprintln!(
            "known open {}.{}: {} of {} cases still fail ({}): {:?}",
            open.builder,
            open.field,
            still.len(),
            matching.len(),
            open.why,
            still
        );
    }
}

/// The audit's cases in this worktree's folders, by name.
#[test]
fn the_audited_values_are_fixed() {
    let run = |builder: &str, field: &str, value: Value| {
        let builder = BUILDERS.iter().find(|b| b.name == builder).unwrap();
        let i = builder.fields.iter().position(|f| f.name == field).unwrap();
        let mut values = vec![None; builder.fields.len()];
        values[i] = Some(value);
        Case { builder, values }.run()
    };
    let max = Value::Duration(Duration::MAX);
    // Duration::MAX means "never behind": the queue serves, and clamps it to a century.
    for field in ["interval", "sideline"] {
        let verdict = run("LifoQueueLayer", field, max);
        assert!(
            matches!(verdict, Verdict::Served(_)),
            "{field}: {verdict:?}"
        );
    }
    // A window longer than a day is refused, naming the field and the range.
    match run("LittleLayer+LittleMeter", "window", max) {
        Verdict::Refused(e) => {
            assert_eq!(e.field(), "window");
            assert!(e.to_string().contains("1 day"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A bucket that could never hold the token a request costs is refused.
    for capacity in [0.5, 1e-300] {
        match run(
            "TokenBucket+TokenBucketLayer",
            "capacity",
            Value::F64(capacity),
        ) {
            Verdict::Refused(e) => assert_eq!(e.field(), "capacity"),
            other => panic!("{capacity}: {other:?}"),
        }
    }
    assert!(matches!(
        run("TokenBucket+TokenBucketLayer", "capacity", Value::F64(1.0)),
        Verdict::Served(_)
    ));
}

/// A case drawn at random: a builder, and for each of its fields either its default or a value
/// from the same sets as the table.
fn any_case() -> impl Strategy<Value = Case> {
    (
        0..BUILDERS.len(),
        proptest::collection::vec(proptest::option::weighted(0.4, any::<Index>()), 16),
    )
        .prop_map(|(b, picks)| {
            let builder = &BUILDERS[b];
            let values = builder
                .fields
                .iter()
                .zip(picks)
                .map(|(field, pick)| {
                    let values = field.kind.values();
                    pick.map(|i| values[i.index(values.len())])
                })
                .collect();
            Case { builder, values }
        })
}

proptest! {
    // 256 combinations by default; PROPTEST_CASES asks for more on a longer run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    ))]

    /// Several fields at once: combinations neither panic nor misbehave either.
    #[test]
    fn no_combination_of_extreme_values_panics_or_misbehaves(case in any_case()) {
        let verdict = case.run();
        let bad = failures(&[(case, verdict)]);
        prop_assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
