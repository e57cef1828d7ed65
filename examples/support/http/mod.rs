//! Shared parts of the examples that run backstop over real HTTP on loopback, and of
//! `tests/http_services.rs`: the example server and client stacks, a bounded load generator,
//! the Prometheus recorder, and a stand-in for the Overloaded → 429/503 helper.
//!
//! Each example uses some of these parts, so unused ones are not an error here.
#![allow(dead_code)]

pub mod client;
pub mod load;
pub mod refusal;
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
