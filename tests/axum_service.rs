//! Runs `examples/axum_service.rs` (three axum services A → B → C on loopback) and holds it to
//! what its module doc claims. Real sockets need the real clock: the run takes about 2 s, and
//! every bound below leaves room for a loaded machine (a slower machine only shrinks the
//! deadlines further down and lengthens nothing the assertions need).

#[allow(dead_code, reason = "the example's main is not called here")]
#[path = "../examples/axum_service.rs"]
mod axum_service;

use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_show_the_http_edge_end_to_end() -> Result<(), backstop::BoxError> {
    let s = axum_service::run_bounded().await?;

    // A's server stack gives the caller's request its 2 s budget; each hop further down has
    // less, and C at most 2000 × 0.9 (A's overall client timeout) → 800 (A's per-attempt cap)
    // → × 0.9 (B's server) × 0.9 (B's overall) × 0.5 (B's per-attempt) × 0.9 (C's server).
    assert!((1500..=2000).contains(&s.hop1_budget_ms), "{s:?}");
    assert!(s.hop2_deadline_ms < s.hop1_budget_ms, "{s:?}");
    assert!(s.hop3_deadline_ms < s.hop2_deadline_ms, "{s:?}");
    assert!(s.hop2_deadline_ms <= 720, "{s:?}");
    assert!((50..=292).contains(&s.hop3_deadline_ms), "{s:?}");

    // The streamed POST failed once on B and was retried with its replayed body.
    assert!(s.streamed_retry_ok, "{s:?}");

    assert_eq!(s.statuses, BTreeSet::from([200, 429, 503, 504]), "{s:?}");
    // Ten over the per-minute quota at least, and the queue's refusals: every one says when to
    // come back, and none was retried.
    assert!(s.refusals >= 11, "{s:?}");
    assert_eq!(s.refusals_with_retry_after, s.refusals, "{s:?}");
    assert_eq!(s.overload_retries, 0, "{s:?}");

    // C stopped working when the deadline it inherited passed, well before the work asked of it
    // (1 s), which it does in full when no deadline comes with the request.
    assert_eq!(s.late_status, 504, "{s:?}");
    // At most one retry for the whole chain: B's client may retry C's 504 once, and marks it
    // retried, so A's client does not send it to B again.
    assert!((1..=2).contains(&s.late_c_attempts), "{s:?}");
    assert_eq!(s.late_b_retries, 0, "{s:?}");
    assert!(s.baseline_c_work_ms >= 1000, "{s:?}");
    assert!(s.late_c_work_ms * 10 < s.baseline_c_work_ms * 6, "{s:?}");
    Ok(())
}
