use std::time::Duration;

use http::{Response, StatusCode};

use super::status::{Code, GrpcStatus, Pushback, is_grpc};
use crate::classify::{Classify, ErrorClassifier, HttpClassifier, Outcome};
use crate::error::BoxError;

/// The status a [`ReadTrailersLayer`](super::ReadTrailersLayer) found in a unary answer's
/// trailers, kept in the response's extensions so every layer above reads it as if it had come
/// in the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailersStatus(pub GrpcStatus);

/// gRPC's mapping of a call's status to what the layers do about it.
///
/// | status | outcome |
/// |---|---|
/// | `OK` (0) | success |
/// | `RESOURCE_EXHAUSTED` (8) | overload: never retried; its pushback is the hint to come back |
/// | `UNAVAILABLE` (14) | retryable, not before its pushback |
/// | `DEADLINE_EXCEEDED` (4) | final: the caller's time ran out below; a retry with what is left of the same deadline only adds load |
/// | `CANCELLED` (1), any other code, an unreadable `grpc-status` (read as `UNKNOWN`) | final |
/// | any failure with a negative or unreadable `grpc-retry-pushback-ms` | overload: the server said "do not retry" |
/// | a gRPC answer with no `grpc-status` yet (its status comes in the trailers) | success at the headers; see below |
/// | a non-200 HTTP status without `grpc-status` (a proxy's answer) | [`HttpClassifier`]'s mapping |
///
/// The status is read from the response's headers (a trailers-only answer: every refusal,
/// every error a tonic handler returns) or from a [`TrailersStatus`] that a
/// [`ReadTrailersLayer`](super::ReadTrailersLayer) below put in its extensions. A status that
/// only comes in the trailers of a streamed answer, with no such layer below, is not known when
/// the layers see the response: they count the call a success (see the
/// [module docs](super#what-each-layer-sees-when-the-status-comes-in-the-trailers)).
///
/// [`DefaultClassifier`](crate::classify::DefaultClassifier) applies this mapping to every
/// `http::Response` that is a gRPC answer (content type `application/grpc*`, or a
/// `grpc-status` header) when the `grpc` feature is on, so a tonic client stack needs no
/// classifier call; `GrpcClassifier` is for explicit use.
///
/// ```
/// use backstop::classify::{Classify, Outcome};
/// use backstop::grpc::GrpcClassifier;
/// use backstop::BoxError;
/// use std::time::Duration;
///
/// let refused = http::Response::builder()
///     .header("content-type", "application/grpc")
///     .header("grpc-status", "8")
///     .header("grpc-retry-pushback-ms", "300")
///     .body(())
///     .unwrap();
/// let outcome = GrpcClassifier.classify(Ok::<_, &BoxError>(&refused));
/// assert_eq!(outcome, Outcome::Overload(Some(Duration::from_millis(300))));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl GrpcClassifier {
    /// Classifies a status read from headers or trailers.
    pub fn classify_status(&self, status: GrpcStatus) -> Outcome {
        if status.code == Code::OK {
            return Outcome::Success;
        }
        let after = match status.pushback {
            Some(Pushback::DoNotRetry) => return Outcome::Overload(None),
            Some(Pushback::After(after)) => Some(after),
            None => None,
        };
        match status.code {
            Code::RESOURCE_EXHAUSTED => Outcome::Overload(after),
            Code::UNAVAILABLE => Outcome::Retryable,
            _ => Outcome::Final,
        }
    }

    /// Classifies a response from its HTTP status, headers and extensions.
    pub fn classify_response<B>(&self, res: &Response<B>) -> Outcome {
        match response_status(res) {
            Some(status) => self.classify_status(status),
            None if res.status() != StatusCode::OK => {
                HttpClassifier.classify_status(res.status(), res.headers())
            }
            // The status is still to come, in the trailers.
            None => Outcome::Success,
        }
    }

    /// The pushback of a retryable answer: the earliest time a retry may be sent.
    pub fn pushback_of<B>(&self, res: &Response<B>) -> Option<Duration> {
        match response_status(res)? {
            GrpcStatus {
                code,
                pushback: Some(Pushback::After(after)),
            } if code != Code::OK => Some(after),
            _ => None,
        }
    }
}

/// The status of a response: from its headers, else from the trailers a layer below read.
pub(crate) fn response_status<B>(res: &Response<B>) -> Option<GrpcStatus> {
    GrpcStatus::from_headers(res.headers())
        .or_else(|| res.extensions().get::<TrailersStatus>().map(|t| t.0))
}

/// True when `res` is read as gRPC by the default classifier.
pub(crate) fn is_grpc_response<B>(res: &Response<B>) -> bool {
    is_grpc(res.headers()) || res.extensions().get::<TrailersStatus>().is_some()
}

impl<B> Classify<Response<B>, BoxError> for GrpcClassifier {
    fn classify(&self, outcome: Result<&Response<B>, &BoxError>) -> Outcome {
        match outcome {
            Ok(res) => self.classify_response(res),
            Err(err) => ErrorClassifier.classify_error(err),
        }
    }

    fn pushback(&self, outcome: Result<&Response<B>, &BoxError>) -> Option<Duration> {
        outcome.ok().and_then(|res| self.pushback_of(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::DefaultClassifier;
    use crate::grpc::status::{GRPC_PUSHBACK_HEADER, GRPC_STATUS_HEADER};
    use http::HeaderValue;

    fn answer(code: Option<&str>, pushback: Option<&str>) -> Response<()> {
        let mut b = Response::builder().header("content-type", "application/grpc");
        if let Some(c) = code {
            b = b.header(GRPC_STATUS_HEADER, c);
        }
        if let Some(p) = pushback {
            b = b.header(GRPC_PUSHBACK_HEADER, p);
        }
        b.body(()).unwrap()
    }

    fn both(res: &Response<()>) -> Outcome {
        let ok = Ok::<_, &BoxError>(res);
        let explicit = GrpcClassifier.classify(ok);
        assert_eq!(explicit, DefaultClassifier.classify(ok), "default differs");
        explicit
    }

    #[test]
    fn statuses_in_headers_map_as_documented() {
        assert_eq!(both(&answer(Some("0"), None)), Outcome::Success);
        assert_eq!(both(&answer(Some("8"), None)), Outcome::Overload(None));
        assert_eq!(both(&answer(Some("14"), None)), Outcome::Retryable);
        assert_eq!(both(&answer(Some("4"), None)), Outcome::Final);
        assert_eq!(both(&answer(Some("1"), None)), Outcome::Final);
        assert_eq!(both(&answer(Some("13"), None)), Outcome::Final);
        assert_eq!(both(&answer(Some("5"), None)), Outcome::Final);
    }

    #[test]
    fn pushback_rides_on_the_outcome_or_forbids_the_retry() {
        let ms = Duration::from_millis;
        assert_eq!(
            both(&answer(Some("8"), Some("300"))),
            Outcome::Overload(Some(ms(300)))
        );
        let unavailable = answer(Some("14"), Some("120"));
        assert_eq!(both(&unavailable), Outcome::Retryable);
        let ok = Ok::<_, &BoxError>(&unavailable);
        assert_eq!(GrpcClassifier.pushback(ok), Some(ms(120)));
        assert_eq!(DefaultClassifier.pushback(ok), Some(ms(120)));
        // Negative, malformed: "do not retry", read as an overload.
        assert_eq!(
            both(&answer(Some("14"), Some("-1"))),
            Outcome::Overload(None)
        );
        assert_eq!(
            both(&answer(Some("14"), Some("x"))),
            Outcome::Overload(None)
        );
        // A success ignores it.
        assert_eq!(both(&answer(Some("0"), Some("-1"))), Outcome::Success);
        let ok_res = answer(Some("0"), Some("50"));
        assert_eq!(GrpcClassifier.pushback(Ok::<_, &BoxError>(&ok_res)), None);
    }

    #[test]
    fn bad_input_has_a_defined_outcome() {
        // An unreadable status is UNKNOWN: final.
        assert_eq!(both(&answer(Some("busy"), None)), Outcome::Final);
        assert_eq!(both(&answer(Some(""), None)), Outcome::Final);
        // A gRPC 200 with no status yet: a success at the headers.
        assert_eq!(both(&answer(None, None)), Outcome::Success);
        // A proxy's 503 without a status: HTTP's reading.
        let mut proxy = answer(None, None);
        *proxy.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(both(&proxy), Outcome::Retryable);
        *proxy.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(both(&proxy), Outcome::Overload(None));
    }

    #[test]
    fn a_status_found_in_the_trailers_counts_as_one_in_the_headers() {
        let mut res = answer(None, None);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(GRPC_STATUS_HEADER, HeaderValue::from_static("14"));
        trailers.insert(GRPC_PUSHBACK_HEADER, HeaderValue::from_static("75"));
        res.extensions_mut()
            .insert(TrailersStatus(GrpcStatus::from_headers(&trailers).unwrap()));
        assert_eq!(both(&res), Outcome::Retryable);
        assert_eq!(
            DefaultClassifier.pushback(Ok::<_, &BoxError>(&res)),
            Some(Duration::from_millis(75))
        );
    }

    #[test]
    fn plain_http_stays_http() {
        let res = Response::builder().status(429).body(()).unwrap();
        assert_eq!(
            DefaultClassifier.classify(Ok::<_, &BoxError>(&res)),
            Outcome::Overload(None)
        );
        let res = Response::builder().status(200).body(()).unwrap();
        assert_eq!(
            DefaultClassifier.classify(Ok::<_, &BoxError>(&res)),
            Outcome::Success
        );
    }
}
