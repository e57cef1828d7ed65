//! Shared parts of the examples that run backstop over real HTTP on loopback, and of
//! `tests/http_services.rs`: the example server and client stacks, a bounded load generator,
//! and the Prometheus recorder. (Errors become HTTP answers with `backstop::http`'s layer.)
//!
//! Each example uses some of these parts, so unused ones are not an error here.
#![allow(dead_code)]

pub mod client;
pub mod load;
pub mod server;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder (once) and returns its handle. Call it before
/// building any layer: series are registered when a layer is built.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The `backstop_` lines of a Prometheus scrape (no comments).
pub fn backstop_lines(scrape: &str) -> Vec<&str> {
    scrape
        .lines()
        .filter(|l| l.starts_with("backstop_"))
        .collect()
}

/// The `backstop_` series the example server exports, as (metric, labels): the Little's-law
/// meters of the server and the client, the server's throttle, PID admission controller and LIFO
/// queue, and the client's retry budget, hedge and token bucket.
/// Every one is registered when its layer is built, so each is present even while it reads 0.
/// (The README lists these; `tests/http_services.rs` checks a scrape has every one.)
pub const EXPORTED_SERIES: &[(&str, &[(&str, &str)])] = &[
    ("backstop_in_flight", &[("name", "http_server")]),
    (
        "backstop_requests_total",
        &[("name", "http_server"), ("outcome", "success")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_server"), ("outcome", "error")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_server"), ("outcome", "overload")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_server"), ("outcome", "cancelled")],
    ),
    ("backstop_latency_seconds_sum", &[("name", "http_server")]),
    ("backstop_concurrency_seconds", &[("name", "http_server")]),
    ("backstop_average_concurrency", &[("name", "http_server")]),
    ("backstop_utilization", &[("name", "http_server")]),
    ("backstop_queue_length", &[("name", "http_server")]),
    (
        "backstop_queue_oldest_wait_seconds",
        &[("name", "http_server")],
    ),
    ("backstop_queue_behind", &[("name", "http_server")]),
    (
        "backstop_refused_total",
        &[("name", "http_server"), ("reason", "queue_full")],
    ),
    (
        "backstop_refused_total",
        &[("name", "http_server"), ("reason", "shed")],
    ),
    (
        "backstop_throttle_requests_total",
        &[("name", "http_server"), ("decision", "admitted")],
    ),
    (
        "backstop_throttle_requests_total",
        &[("name", "http_server"), ("decision", "shed")],
    ),
    (
        "backstop_throttle_requests_total",
        &[("name", "http_server"), ("decision", "quota")],
    ),
    (
        "backstop_throttle_requests_total",
        &[("name", "http_server"), ("decision", "missing_key")],
    ),
    (
        "backstop_throttle_shed_fraction",
        &[("name", "http_server")],
    ),
    ("backstop_throttle_tracked_keys", &[("name", "http_server")]),
    (
        "backstop_throttle_evicted_keys_total",
        &[("name", "http_server")],
    ),
    ("backstop_admission_probability", &[("name", "http_server")]),
    ("backstop_admission_error", &[("name", "http_server")]),
    ("backstop_admission_p_term", &[("name", "http_server")]),
    ("backstop_admission_i_term", &[("name", "http_server")]),
    ("backstop_admission_d_term", &[("name", "http_server")]),
    (
        "backstop_admission_denied_total",
        &[("name", "http_server")],
    ),
    ("backstop_in_flight", &[("name", "http_client")]),
    (
        "backstop_requests_total",
        &[("name", "http_client"), ("outcome", "success")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_client"), ("outcome", "error")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_client"), ("outcome", "overload")],
    ),
    (
        "backstop_requests_total",
        &[("name", "http_client"), ("outcome", "cancelled")],
    ),
    ("backstop_latency_seconds_sum", &[("name", "http_client")]),
    ("backstop_concurrency_seconds", &[("name", "http_client")]),
    ("backstop_average_concurrency", &[("name", "http_client")]),
    ("backstop_retry_budget_tokens", &[("name", "http_client")]),
    ("backstop_retries_allowed_total", &[("name", "http_client")]),
    ("backstop_retries_denied_total", &[("name", "http_client")]),
    ("backstop_hedges_total", &[("name", "http_client")]),
    ("backstop_hedge_wins_total", &[("name", "http_client")]),
    ("backstop_hedges_denied_total", &[("name", "http_client")]),
    ("backstop_hedge_delay_seconds", &[("name", "http_client")]),
    ("backstop_token_bucket_tokens", &[("name", "http_client")]),
    ("backstop_token_bucket_rate", &[("name", "http_client")]),
    (
        "backstop_token_bucket_acquired_total",
        &[("name", "http_client")],
    ),
    (
        "backstop_token_bucket_denied_total",
        &[("name", "http_client")],
    ),
];

/// The value of the series `metric` with all of `labels` in a Prometheus text scrape, if present.
pub fn series_value(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let wanted = labels.iter().all(|(k, v)| {
            labels_part
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        wanted.then(|| value.trim().parse().ok()).flatten()
    })
}
