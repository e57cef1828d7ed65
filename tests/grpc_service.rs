//! Runs `examples/grpc_service.rs` (a tonic server and client on loopback, each with backstop's
//! stack) and holds it to what its module doc claims. Real sockets need the real clock: the run
//! takes about 4 s, and every bound below leaves room for a loaded 2-core machine.
#![cfg(feature = "grpc")]

#[allow(dead_code, reason = "the example's main is not called here")]
#[path = "../examples/grpc_service.rs"]
mod grpc_service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_and_client_speak_backstop() -> Result<(), backstop::BoxError> {
    let s = grpc_service::run_bounded().await?;

    // 3× capacity: the server refused what it could not serve, as UNAVAILABLE (a full server),
    // and still served a good share of its capacity in time. (A loaded machine serves less than
    // the nominal capacity; the bound only says the server was not swamped into serving none.)
    assert_eq!(s.overload_code, 14, "{s:?}");
    assert_eq!(
        s.refusal_codes.keys().copied().collect::<Vec<_>>(),
        [14],
        "{s:?}"
    );
    assert!(s.goodput > 0.3 && s.goodput <= 1.1, "{s:?}");
    // Against the same client and server at 1× capacity, measured in the same run: overload
    // did not cut what the server gets done to a fraction.
    assert!(s.baseline_goodput > 0.3, "{s:?}");
    assert!(s.goodput > 0.5 * s.baseline_goodput, "{s:?}");
    assert!(
        s.client_codes.get("Unavailable").copied().unwrap_or(0) > 0,
        "{s:?}"
    );

    // UNAVAILABLE once per call: some retried, within the budget (far from all of them), every
    // retry after the pushback, and every retried call ended OK.
    assert_eq!(s.unavailable_calls, 200, "{s:?}");
    assert!(s.unavailable_retried >= 1, "{s:?}");
    assert!(s.retried_unavailable < 0.25, "{s:?}");
    assert_eq!(s.unavailable_ok, s.unavailable_retried, "{s:?}");
    assert!(s.pushback_respected, "{s:?}");
    assert!(s.retry_gaps_ms.iter().all(|g| *g >= 50), "{s:?}");

    // RESOURCE_EXHAUSTED: every call reached the server once, and none was retried.
    assert_eq!(s.exhausted_calls, 200, "{s:?}");
    assert_eq!(s.retried_exhausted, 0, "{s:?}");
    assert_eq!(
        s.exhausted_codes.get("ResourceExhausted"),
        Some(&200),
        "{s:?}"
    );

    // The server read the client's 250 ms deadline from grpc-timeout, less the time on the way.
    assert!((100..=250).contains(&s.deadline_seen_ms), "{s:?}");
    Ok(())
}
