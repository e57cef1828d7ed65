//! gRPC status codes and the two headers backstop reads: `grpc-status` and
//! `grpc-retry-pushback-ms`, parsed by hand (no protobuf or tonic dependency).

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

/// The header (or trailer) carrying a call's status code.
pub const GRPC_STATUS_HEADER: &str = "grpc-status";
/// The header (or trailer) carrying the status message.
pub const GRPC_MESSAGE_HEADER: &str = "grpc-message";
/// The header (or trailer) a server uses to tell a client when, or whether, to retry (gRPC's
/// A6 design).
pub const GRPC_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// A gRPC status code. Only the codes backstop reacts to have names; every other number is kept
/// as it came ([`Code::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(u32);

impl Code {
    /// 0: the call did its work.
    pub const OK: Code = Code(0);
    /// 1: the caller gave up.
    pub const CANCELLED: Code = Code(1);
    /// 2: an error with no better code; also what backstop reads an unreadable status as.
    pub const UNKNOWN: Code = Code(2);
    /// 4: the deadline passed before the work was done.
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// 8: the caller asks for too much (a quota, a rate): gRPC's overload code.
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    /// 13: the server broke one of its own invariants.
    pub const INTERNAL: Code = Code(13);
    /// 14: the server (or the way to it) cannot serve now: gRPC's retryable code.
    pub const UNAVAILABLE: Code = Code(14);

    /// The code of a number.
    pub const fn from_u32(code: u32) -> Code {
        Code(code)
    }

    /// The number.
    pub const fn code(self) -> u32 {
        self.0
    }

    /// Reads a `grpc-status` value: a decimal number. Anything else (empty, a sign, letters,
    /// more than ten digits) is [`Code::UNKNOWN`], which is what gRPC clients make of a status
    /// they cannot read: a failure that a retry is not known to fix.
    ///
    /// ```
    /// use backstop::grpc::Code;
    ///
    /// assert_eq!(Code::parse(b"14"), Code::UNAVAILABLE);
    /// assert_eq!(Code::parse(b"busy"), Code::UNKNOWN);
    /// ```
    pub fn parse(value: &[u8]) -> Code {
        std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(Code::UNKNOWN, Code)
    }

    /// The value as sent in a `grpc-status` header.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from(self.0)
    }
}

/// What a `grpc-retry-pushback-ms` value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// A non-negative number of milliseconds: do not retry before this much time has passed.
    After(Duration),
    /// A negative or unreadable value: do not retry this call at all.
    DoNotRetry,
}

impl Pushback {
    /// Reads a `grpc-retry-pushback-ms` value. A decimal integer from 0 up to `u64::MAX` ms is
    /// [`Pushback::After`] (a huge one is kept as it is: the retry layer then finds it beyond
    /// the deadline and does not retry); a negative number, a number beyond `u64`, an empty or
    /// non-numeric value is [`Pushback::DoNotRetry`], as gRPC's A6 design says.
    ///
    /// ```
    /// use backstop::grpc::Pushback;
    /// use std::time::Duration;
    ///
    /// assert_eq!(Pushback::parse(b"250"), Pushback::After(Duration::from_millis(250)));
    /// assert_eq!(Pushback::parse(b"-1"), Pushback::DoNotRetry);
    /// assert_eq!(Pushback::parse(b"soon"), Pushback::DoNotRetry);
    /// ```
    pub fn parse(value: &[u8]) -> Pushback {
        std::str::from_utf8(value)
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Pushback::DoNotRetry, |ms| {
                Pushback::After(Duration::from_millis(ms))
            })
    }

    /// The pushback in `headers` (or trailers), if any.
    pub fn from_headers(headers: &HeaderMap) -> Option<Pushback> {
        headers
            .get(GRPC_PUSHBACK_HEADER)
            .map(|v| Pushback::parse(v.as_bytes()))
    }

    /// The value to send for a delay: whole milliseconds, rounded up, so a client told to wait
    /// waits at least as long as asked.
    pub fn header_value(delay: Duration) -> HeaderValue {
        let ms = delay
            .as_millis()
            .saturating_add(u128::from(!delay.subsec_nanos().is_multiple_of(1_000_000)));
        HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// A call's status as read from one header map: its code and the pushback that came with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The `grpc-status` code ([`Code::UNKNOWN`] when unreadable).
    pub code: Code,
    /// The `grpc-retry-pushback-ms` value, when one was sent.
    pub pushback: Option<Pushback>,
}

impl GrpcStatus {
    /// The status in `headers` (the headers of a trailers-only answer, or the trailers), or
    /// `None` when they carry no `grpc-status`.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcStatus> {
        let code = Code::parse(headers.get(GRPC_STATUS_HEADER)?.as_bytes());
        Some(GrpcStatus {
            code,
            pushback: Pushback::from_headers(headers),
        })
    }
}

/// True when a response is a gRPC answer: its content type is `application/grpc` (or
/// `application/grpc+proto`, `application/grpc-web...`), or it carries a `grpc-status`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.contains_key(GRPC_STATUS_HEADER)
        || headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_as_numbers_and_anything_else_is_unknown() {
        assert_eq!(Code::parse(b"0"), Code::OK);
        assert_eq!(Code::parse(b"8"), Code::RESOURCE_EXHAUSTED);
        assert_eq!(Code::parse(b"4"), Code::DEADLINE_EXCEEDED);
        assert_eq!(Code::parse(b"99"), Code::from_u32(99));
        for bad in [
            &b""[..],
            b"-1",
            b"+8",
            b" 8",
            b"eight",
            b"99999999999",
            b"\xff",
        ] {
            assert_eq!(Code::parse(bad), Code::UNKNOWN, "{bad:?}");
        }
    }

    #[test]
    fn pushback_parses_as_a6_says() {
        assert_eq!(Pushback::parse(b"0"), Pushback::After(Duration::ZERO));
        assert_eq!(
            Pushback::parse(b" 1500 "),
            Pushback::After(Duration::from_millis(1500))
        );
        assert_eq!(
            Pushback::parse(b"18446744073709551615"),
            Pushback::After(Duration::from_millis(u64::MAX))
        );
        for bad in [
            &b"-1"[..],
            b"-0",
            b"",
            b"1.5",
            b"1e3",
            b"ten",
            b"18446744073709551616",
            b"\xff",
        ] {
            assert_eq!(Pushback::parse(bad), Pushback::DoNotRetry, "{bad:?}");
        }
    }

    #[test]
    fn pushback_header_rounds_up_to_whole_milliseconds() {
        assert_eq!(Pushback::header_value(Duration::from_millis(250)), "250");
        assert_eq!(
            Pushback::header_value(Duration::from_micros(250_001)),
            "251"
        );
        assert_eq!(
            Pushback::header_value(Duration::MAX),
            "18446744073709551615"
        );
    }

    #[test]
    fn grpc_answers_are_recognised_by_content_type_or_status() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        let mut h = HeaderMap::new();
        h.insert(GRPC_STATUS_HEADER, HeaderValue::from_static("0"));
        assert!(is_grpc(&h));
    }
}
