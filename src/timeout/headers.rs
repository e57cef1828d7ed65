//! Carrying the remaining deadline across the network in HTTP headers.
//!
//! A client writes the time it has left into the request; the server reads it back as its own
//! [`Deadline`], so it stops working on a request once its caller has given up. Two forms are
//! written and read: gRPC's `grpc-timeout` (digits and a unit: `250m` is 250 ms) and a plain
//! milliseconds header, [`TIMEOUT_MS_HEADER`]. The gRPC form wins when both are present.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::time::Instant;

use super::{Deadline, HasDeadline};

/// gRPC's deadline header.
pub const GRPC_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("grpc-timeout");
/// The remaining deadline in whole milliseconds.
pub const TIMEOUT_MS_HEADER: HeaderName = HeaderName::from_static("backstop-timeout-ms");

/// The most digits gRPC allows in a `grpc-timeout` value.
const GRPC_MAX_DIGITS_VALUE: u128 = 99_999_999;

/// Parses a `grpc-timeout` value such as `100m` or `3S`. `None` for anything malformed.
///
/// ```
/// use backstop::timeout::headers::parse_grpc_timeout;
/// use std::time::Duration;
/// assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
/// assert_eq!(parse_grpc_timeout("12x"), None);
/// ```
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, in the finest unit that fits gRPC's eight
/// digits. It rounds up by at most one unit of that scale, a relative error below 10⁻⁷.
///
/// ```
/// use backstop::timeout::headers::format_grpc_timeout;
/// use std::time::Duration;
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600 * 24)), "86400000m");
/// ```
pub fn format_grpc_timeout(d: Duration) -> String {
    let nanos = d.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (scale, unit) in units {
        let value = nanos.div_ceil(scale);
        if value <= GRPC_MAX_DIGITS_VALUE {
            return format!("{value}{unit}");
        }
    }
    format!("{GRPC_MAX_DIGITS_VALUE}H")
}

/// Reads the caller's deadline from `headers`, counting from `now`.
pub fn read_deadline(headers: &HeaderMap, now: Instant) -> Option<Deadline> {
    let remaining = headers
        .get(GRPC_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .or_else(|| {
            headers
                .get(TIMEOUT_MS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
        })?;
    Some(Deadline::after_from(now, remaining))
}

/// Writes the time left before `deadline` into `headers`, in both forms.
pub fn write_deadline(headers: &mut HeaderMap, deadline: Deadline, now: Instant) {
    let remaining = deadline.instant().saturating_duration_since(now);
    if let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(remaining)) {
        headers.insert(GRPC_TIMEOUT_HEADER, v);
    }
    headers.insert(
        TIMEOUT_MS_HEADER,
        HeaderValue::from(remaining.as_millis() as u64),
    );
}

/// For servers: sets the request's [`Deadline`] from its headers (when it carries none yet).
///
/// Use it with `tower::util::MapRequestLayer`, in front of a [`TimeoutLayer`](super::TimeoutLayer):
///
/// ```
/// use backstop::timeout::headers::inherit_deadline;
/// use tower::util::MapRequestLayer;
///
/// let layer = MapRequestLayer::new(inherit_deadline::<String>);
/// # let _ = layer;
/// ```
pub fn inherit_deadline<B>(mut req: Request<B>) -> Request<B> {
    if req.deadline().is_none()
        && let Some(deadline) = read_deadline(req.headers(), Instant::now())
    {
        req.set_deadline(deadline);
    }
    req
}

/// For clients: writes the request's [`Deadline`] (or, when it carries none, the deadline of the
/// [scope](crate::context) it is sent from) into its headers, so the server inherits it.
///
/// Put it below the timeout layers, just above the transport, with
/// `tower::util::MapRequestLayer::new(send_deadline::<B>)`.
pub fn send_deadline<B>(mut req: Request<B>) -> Request<B> {
    if let Some(deadline) = crate::context::effective_deadline(&req) {
        write_deadline(req.headers_mut(), deadline, Instant::now());
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_without_gaining_time() {
        for ms in [0u64, 1, 250, 99_999, 100_000, 86_400_000, 3_000_000_000] {
            let d = Duration::from_millis(ms);
            let back = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            assert!(back >= d, "{ms} ms came back as {back:?}");
            // Rounding up costs at most one unit of the chosen scale, which is at most 1/10^7 of it.
            assert!(back - d <= d / 10_000_000 + Duration::from_nanos(1));
        }
    }

    #[test]
    fn malformed_grpc_timeouts_are_rejected() {
        for bad in ["", "m", "123456789m", "-5m", "5 m", "5ms", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_inherits_the_callers_remaining_time() {
        let deadline = Deadline::after(Duration::from_millis(800));
        tokio::time::advance(Duration::from_millis(300)).await;

        let req = send_deadline({
            let mut r = Request::new(());
            r.set_deadline(deadline);
            r
        });
        assert_eq!(req.headers()[TIMEOUT_MS_HEADER], "500");

        // The server side: a fresh request with only the headers.
        let mut server_req = Request::new(());
        *server_req.headers_mut() = req.headers().clone();
        let server_req = inherit_deadline(server_req);
        assert_eq!(
            server_req.deadline().unwrap().remaining(),
            Duration::from_millis(500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_millisecond_header_is_read_when_grpc_timeout_is_absent() {
        let mut headers = HeaderMap::new();
        headers.insert(TIMEOUT_MS_HEADER, HeaderValue::from_static("1200"));
        let d = read_deadline(&headers, Instant::now()).unwrap();
        assert_eq!(d.remaining(), Duration::from_millis(1200));
        headers.insert(GRPC_TIMEOUT_HEADER, HeaderValue::from_static("3S"));
        let d = read_deadline(&headers, Instant::now()).unwrap();
        assert_eq!(d.remaining(), Duration::from_secs(3));
    }
}
