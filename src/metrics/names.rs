//! Every metric name backstop records, in one place.
//!
//! All series carry the label [`NAME_LABEL`], the name given to the layer instance, so two
//! meters in one process never mix. Series are registered when their layer is built, so a
//! counter that has seen nothing reads 0 rather than missing: a zero says the fix worked, a
//! missing series says the service stopped reporting.

/// The label carrying the layer instance's name.
pub const NAME_LABEL: &str = "name";
/// The label carrying a request's outcome: `success`, `error`, `overload` or `cancelled`.
pub const OUTCOME_LABEL: &str = "outcome";

/// Gauge: requests in flight through a Little's-law meter now.
pub const IN_FLIGHT: &str = "backstop_in_flight";
/// Counter: requests completed, by [`OUTCOME_LABEL`].
pub const REQUESTS: &str = "backstop_requests_total";
/// Gauge that only rises: the sum of completed requests' latencies, in seconds. (The `metrics`
/// facade has integer counters only; `rate()` over this series is the average concurrency of
/// completed requests, by Little's law.)
pub const LATENCY_SUM_SECONDS: &str = "backstop_latency_seconds_sum";
/// Gauge that only rises: the exact area under the in-flight curve, in concurrency-seconds,
/// kept exact at every arrival and departure. `rate()` over it is the average concurrency, with
/// long requests counted while they run. Like every meter series, published from the meter's
/// own sums at most every 100 ms and on [`LittleMeter::publish`](super::LittleMeter::publish).
pub const CONCURRENCY_SECONDS: &str = "backstop_concurrency_seconds";
/// Gauge: the average concurrency over the meter's last window.
pub const AVERAGE_CONCURRENCY: &str = "backstop_average_concurrency";
/// Gauge: average concurrency over the last window divided by the stated capacity.
pub const UTILIZATION: &str = "backstop_utilization";

/// Outcome label values, in the order the meter registers them.
pub const OUTCOMES: [&str; 4] = ["success", "error", "overload", "cancelled"];

/// Describes every series to the installed recorder (units and help text). Called when a meter
/// is built; calling it again is harmless.
pub fn describe() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(IN_FLIGHT, Unit::Count, "Requests in flight now.");
    describe_counter!(REQUESTS, Unit::Count, "Requests completed, by outcome.");
    describe_gauge!(
        LATENCY_SUM_SECONDS,
        Unit::Seconds,
        "Sum of completed request latencies (only rises)."
    );
    describe_gauge!(
        CONCURRENCY_SECONDS,
        Unit::Seconds,
        "Area under the in-flight curve, in concurrency-seconds (only rises)."
    );
    describe_gauge!(
        AVERAGE_CONCURRENCY,
        Unit::Count,
        "Average concurrency over the last window (Little's law)."
    );
    describe_gauge!(
        UTILIZATION,
        "Average concurrency over the last window divided by capacity (1.0 = full)."
    );
}

/// The label carrying why a request was refused ([`OverloadReason::as_str`](crate::OverloadReason::as_str)).
pub const REASON_LABEL: &str = "reason";
/// Gauge: requests waiting in a backpressure or LIFO queue now.
pub const QUEUE_LENGTH: &str = "backstop_queue_length";
/// Gauge: how long the oldest waiter of a queue has waited, in seconds (0 when none waits): the
/// health metric of a queue. Refreshed at every queue event (a request that waits, a refusal, a
/// grant, a shed, a cancel).
pub const QUEUE_OLDEST_WAIT_SECONDS: &str = "backstop_queue_oldest_wait_seconds";
/// Gauge: 1 while an adaptive LIFO queue is behind (serving newest first), else 0.
pub const QUEUE_BEHIND: &str = "backstop_queue_behind";
/// Counter: requests a queue refused, by [`REASON_LABEL`] (`queue_full` or `shed`).
pub const REFUSED: &str = "backstop_refused_total";

/// Counter: requests a backpressure or LIFO queue refused, by reason (`queue_full`, `shed`) and
/// by the refused request's criticality level: which levels a full queue turns away.
pub const QUEUE_REFUSED_BY_CRITICALITY: &str = "backstop_queue_refused_by_criticality_total";
/// Describes the queue series (backpressure and LIFO queue). Calling it again is harmless.
pub fn describe_queues() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        QUEUE_LENGTH,
        Unit::Count,
        "Requests waiting in the queue now."
    );
    describe_gauge!(
        QUEUE_OLDEST_WAIT_SECONDS,
        Unit::Seconds,
        "Age of the oldest waiter (0 when none waits)."
    );
    describe_gauge!(
        QUEUE_BEHIND,
        "1 while the adaptive LIFO queue is behind and serves newest first."
    );
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Requests refused by a queue, by reason."
    );
    describe_counter!(
        QUEUE_REFUSED_BY_CRITICALITY,
        Unit::Count,
        "Requests refused by a queue, by reason and by the request's criticality level."
    );
}

/// Gauge: the PID admission controller's admission probability, in [0, 1] (1 = admit all).
pub const ADMISSION_PROBABILITY: &str = "backstop_admission_probability";
/// Gauge: the admission controller's last error (measurement − setpoint, in the signal's unit).
pub const ADMISSION_ERROR: &str = "backstop_admission_error";
/// Gauge: the admission controller's proportional term (a share of requests to shed).
pub const ADMISSION_P_TERM: &str = "backstop_admission_p_term";
/// Gauge: the admission controller's integral term (a share of requests to shed).
pub const ADMISSION_I_TERM: &str = "backstop_admission_i_term";
/// Gauge: the admission controller's derivative term (a share of requests to shed).
pub const ADMISSION_D_TERM: &str = "backstop_admission_d_term";
/// Counter: requests the admission controller refused with `AdmissionDenied`.
pub const ADMISSION_DENIED: &str = "backstop_admission_denied_total";
/// Counter: requests refused by the admission controller, by [`CRITICALITY_LABEL`] (all four
/// levels registered at build, so zeros show).
pub const ADMISSION_DENIED_BY_CRITICALITY: &str = "backstop_admission_denied_by_criticality_total";
/// Label: a request's criticality level (`sheddable`, `sheddable_plus`, `critical`,
/// `critical_plus`).
pub const CRITICALITY_LABEL: &str = "criticality";

/// Describes the admission controller's series. Calling it again is harmless.
pub fn describe_admission() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        ADMISSION_PROBABILITY,
        "Probability that a request is admitted (1 = all)."
    );
    describe_gauge!(
        ADMISSION_ERROR,
        "Controller error: measurement minus setpoint, in the signal's unit."
    );
    describe_gauge!(ADMISSION_P_TERM, "Proportional term (share to shed).");
    describe_gauge!(ADMISSION_I_TERM, "Integral term (share to shed).");
    describe_gauge!(ADMISSION_D_TERM, "Derivative term (share to shed).");
    describe_counter!(
        ADMISSION_DENIED,
        Unit::Count,
        "Requests refused by the admission controller."
    );
    describe_counter!(
        ADMISSION_DENIED_BY_CRITICALITY,
        Unit::Count,
        "Requests refused by the admission controller, by criticality level."
    );
}

/// Counter: duplicates a hedge layer sent (one per hedged request; both copies count once in
/// constant-work mode).
pub const HEDGES_SENT: &str = "backstop_hedges_total";
/// Counter: hedged requests the duplicate answered first (with a success).
pub const HEDGE_WINS: &str = "backstop_hedge_wins_total";
/// Counter: late requests not hedged because the hedge budget was empty.
pub const HEDGES_DENIED: &str = "backstop_hedges_denied_total";
/// Gauge: the hedge delay in use when the last duplicate went out, in seconds.
pub const HEDGE_DELAY_SECONDS: &str = "backstop_hedge_delay_seconds";
/// Counter: late requests not hedged because too many recent requests were late at once.
pub const HEDGES_STOOD_DOWN: &str = "backstop_hedges_stood_down_total";

/// Describes the hedge series. Calling it again is harmless.
pub fn describe_hedge() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(HEDGES_SENT, Unit::Count, "Duplicates a hedge layer sent.");
    describe_counter!(
        HEDGE_WINS,
        Unit::Count,
        "Hedged requests the duplicate answered first."
    );
    describe_counter!(
        HEDGES_DENIED,
        Unit::Count,
        "Late requests not hedged because the hedge budget was empty."
    );
    describe_gauge!(
        HEDGE_DELAY_SECONDS,
        Unit::Seconds,
        "Hedge delay in use when the last duplicate went out."
    );
    describe_counter!(
        HEDGES_STOOD_DOWN,
        Unit::Count,
        "Late requests not hedged because too many recent requests were late at once."
    );
}

/// Gauge: tokens a retry budget holds now (earned tokens only, not the time-based floor).
pub const RETRY_BUDGET_TOKENS: &str = "backstop_retry_budget_tokens";
/// Counter: retries a retry budget allowed (withdrawals granted, including any later refunded
/// because the retry was cancelled before it was sent).
pub const RETRIES_ALLOWED: &str = "backstop_retries_allowed_total";
/// Counter: retries a retry budget denied.
pub const RETRIES_DENIED: &str = "backstop_retries_denied_total";

/// The label carrying a throttle's decision: `admitted`, `shed` (whole-client shedding),
/// `quota` (over the client's quota) or `missing_key` (refused for having no client key).
pub const DECISION_LABEL: &str = "decision";
/// Counter: requests a throttle layer decided on, by [`DECISION_LABEL`].
pub const THROTTLE_REQUESTS: &str = "backstop_throttle_requests_total";
/// Gauge: the fraction of clients a [`ShedFraction`](crate::throttle::ShedFraction) asks to shed.
pub const THROTTLE_SHED_FRACTION: &str = "backstop_throttle_shed_fraction";
/// Gauge: clients tracked by [`ClientQuotas`](crate::throttle::ClientQuotas), set whenever the
/// count changes.
pub const THROTTLE_TRACKED_KEYS: &str = "backstop_throttle_tracked_keys";
/// Counter: clients dropped from [`ClientQuotas`](crate::throttle::ClientQuotas), by sweeps or to
/// make room for a new client.
pub const THROTTLE_EVICTED_KEYS: &str = "backstop_throttle_evicted_keys_total";
/// Counter: requests a throttle layer found no client key in, whatever
/// [`MissingKey`](crate::throttle::MissingKey) then did with them.
pub const THROTTLE_KEYLESS: &str = "backstop_throttle_keyless_requests_total";

/// Throttle decision label values, in the order the layer registers them.
pub const THROTTLE_DECISIONS: [&str; 4] = ["admitted", "shed", "quota", "missing_key"];
/// Counter: requests a throttle layer refused, by [`DECISION_LABEL`] (`shed` or `quota`) and
/// [`CRITICALITY_LABEL`] (all eight registered at build, so zeros show).
pub const THROTTLE_REFUSED_BY_CRITICALITY: &str = "backstop_throttle_refused_by_criticality_total";

/// Describes the throttle series. Calling it again is harmless.
pub fn describe_throttle() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        THROTTLE_REQUESTS,
        Unit::Count,
        "Requests a throttle decided on, by decision."
    );
    describe_gauge!(
        THROTTLE_SHED_FRACTION,
        "Fraction of clients asked to be shed (0 to 1)."
    );
    describe_gauge!(
        THROTTLE_TRACKED_KEYS,
        Unit::Count,
        "Clients tracked by the per-client quotas."
    );
    describe_counter!(
        THROTTLE_EVICTED_KEYS,
        Unit::Count,
        "Clients dropped from the per-client quotas (swept, or replaced by a new client)."
    );
    describe_counter!(
        THROTTLE_KEYLESS,
        Unit::Count,
        "Requests in which the throttle found no client key."
    );
    describe_counter!(
        THROTTLE_REFUSED_BY_CRITICALITY,
        Unit::Count,
        "Requests a throttle refused, by decision (shed, quota) and criticality level."
    );
}

/// Counter: lease calls a fleet quota store sent to Redis, by [`OUTCOME_LABEL`] (`ok`, or
/// `failed`: an error, garbage, or no answer within the call timeout).
pub const FLEET_QUOTA_REDIS_CALLS: &str = "backstop_fleet_quota_redis_calls_total";
/// Counter: requests a fleet quota store decided on its local share because Redis was failing.
pub const FLEET_QUOTA_FALLBACK: &str = "backstop_fleet_quota_fallback_requests_total";
/// Gauge: 1 while a fleet quota store runs on local shares (Redis failed, no answer since).
pub const FLEET_QUOTA_DEGRADED: &str = "backstop_fleet_quota_degraded";

/// Describes the fleet quota store's series. Calling it again is harmless.
pub fn describe_fleet_quota() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        FLEET_QUOTA_REDIS_CALLS,
        Unit::Count,
        "Lease calls a fleet quota store sent to Redis, by outcome."
    );
    describe_counter!(
        FLEET_QUOTA_FALLBACK,
        Unit::Count,
        "Requests decided on the local share because Redis was failing."
    );
    describe_gauge!(
        FLEET_QUOTA_DEGRADED,
        "1 while the fleet quota store runs on local shares."
    );
}

/// Gauge: tokens a client-wide token bucket holds, refreshed at a grant or refusal at most every
/// 100 ms, at each change of its settings and on
/// [`TokenBucket::publish`](crate::token_bucket::TokenBucket::publish).
pub const TOKEN_BUCKET_TOKENS: &str = "backstop_token_bucket_tokens";
/// Gauge: a token bucket's refill rate, tokens per second (+Inf while unlimited).
pub const TOKEN_BUCKET_RATE: &str = "backstop_token_bucket_rate";
/// Counter: grants of a token bucket (requests let through, including while unlimited).
pub const TOKEN_BUCKET_ACQUIRED: &str = "backstop_token_bucket_acquired_total";
/// Counter: refusals of a token bucket (empty bucket, or a wait that ran out).
pub const TOKEN_BUCKET_DENIED: &str = "backstop_token_bucket_denied_total";

/// Describes the token bucket series. Calling it again is harmless.
pub fn describe_token_bucket() {
    warn_if_no_recorder();
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(TOKEN_BUCKET_TOKENS, Unit::Count, "Tokens the bucket holds.");
    describe_gauge!(
        TOKEN_BUCKET_RATE,
        "Refill rate of the bucket, tokens per second (+Inf while unlimited)."
    );
    describe_counter!(
        TOKEN_BUCKET_ACQUIRED,
        Unit::Count,
        "Grants of the token bucket."
    );
    describe_counter!(
        TOKEN_BUCKET_DENIED,
        Unit::Count,
        "Refusals of the token bucket."
    );
}

/// Counter: requests whose body could no longer be replayed, so they were not retried or hedged
/// again, by [`REASON_LABEL`] (`too_large` or `body_error`).
#[cfg(feature = "http")]
pub const REPLAY_ABANDONED: &str = "backstop_replay_abandoned_total";

/// Describes the replayable body's series.
#[cfg(feature = "http")]
pub fn describe_replay() {
    warn_if_no_recorder();
    metrics::describe_counter!(
        REPLAY_ABANDONED,
        metrics::Unit::Count,
        "Request bodies that could no longer be replayed (not retried or hedged again), by reason."
    );
}

/// Counter: requests the client throttle refused locally, before sending them.
pub const CLIENT_THROTTLE_REFUSED: &str = "backstop_client_throttle_refused_total";
/// Gauge: the client throttle's local refusal probability at the last request.
pub const CLIENT_THROTTLE_PROBABILITY: &str = "backstop_client_throttle_probability";

/// Describes the client throttle's series.
pub fn describe_client_throttle() {
    warn_if_no_recorder();
    metrics::describe_counter!(
        CLIENT_THROTTLE_REFUSED,
        metrics::Unit::Count,
        "Requests the client throttle refused locally (the server refused too many)."
    );
    metrics::describe_gauge!(
        CLIENT_THROTTLE_PROBABILITY,
        "Probability that the client throttle refuses a request locally."
    );
}

/// True when a `metrics` recorder (global, or local to this thread) is installed now. The facade
/// has no direct query; its no-op recorder is the one recorder of size zero, so this asks the
/// size of the recorder in use.
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
}

/// In debug builds, says once per process on stderr that a layer was built before any recorder
/// was installed: its series would go nowhere, silently (the facade hands out no-op handles).
fn warn_if_no_recorder() {
    #[cfg(debug_assertions)]
    if !recorder_installed() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!(
                "backstop: a layer was built before any `metrics` recorder was installed, so its \
                 series go nowhere; install the recorder before building the layers (ignore this \
                 if you export no metrics)"
            )
        });
    }
}

#[cfg(test)]
mod recorder_tests {
    #[test]
    fn the_no_op_recorder_is_the_one_of_size_zero_and_a_real_one_is_seen() {
        assert_eq!(std::mem::size_of::<metrics::NoopRecorder>(), 0);
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        assert!(metrics::with_local_recorder(
            &recorder,
            super::recorder_installed
        ));
    }
}
