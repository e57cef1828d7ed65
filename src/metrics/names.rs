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
/// updated at every arrival and departure. `rate()` over it is the average concurrency, with
/// long requests counted while they run.
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

/// Describes the queue series (backpressure and LIFO queue). Calling it again is harmless.
pub fn describe_queues() {
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
}

/// Gauge: tokens a retry budget holds now (earned tokens only, not the time-based floor).
pub const RETRY_BUDGET_TOKENS: &str = "backstop_retry_budget_tokens";
/// Counter: retries a retry budget allowed (withdrawals granted, including any later refunded
/// because the retry was cancelled before it was sent).
pub const RETRIES_ALLOWED: &str = "backstop_retries_allowed_total";
/// Counter: retries a retry budget denied.
pub const RETRIES_DENIED: &str = "backstop_retries_denied_total";

/// Gauge: tokens a client-wide token bucket holds, refreshed at each grant or refusal and at
/// each change of its settings.
pub const TOKEN_BUCKET_TOKENS: &str = "backstop_token_bucket_tokens";
/// Gauge: a token bucket's refill rate, tokens per second (+Inf while unlimited).
pub const TOKEN_BUCKET_RATE: &str = "backstop_token_bucket_rate";
/// Counter: grants of a token bucket (requests let through, including while unlimited).
pub const TOKEN_BUCKET_ACQUIRED: &str = "backstop_token_bucket_acquired_total";
/// Counter: refusals of a token bucket (empty bucket, or a wait that ran out).
pub const TOKEN_BUCKET_DENIED: &str = "backstop_token_bucket_denied_total";

/// Describes the token bucket series. Calling it again is harmless.
pub fn describe_token_bucket() {
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
