//! [`Overloaded`] as an HTTP answer: 429 or 503 with `Retry-After`, for any layer's refusals.

use std::time::Duration;

use crate::error::{BoxError, OverloadReason, Overloaded, find_in_chain, find_overload};
use crate::throttle::MissingClientKey;

impl Overloaded {
    /// The status a server answers this refusal with: 429 Too Many Requests when the client is
    /// asking too much (`Throttled`, `RateLimited`), 503 Service Unavailable when the server
    /// is (every other reason).
    pub fn http_status(&self) -> http::StatusCode {
        match self.reason() {
            OverloadReason::Throttled | OverloadReason::RateLimited => {
                http::StatusCode::TOO_MANY_REQUESTS
            }
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The refusal as an empty-bodied response: [`http_status`](Self::http_status) and
    /// `Retry-After` in whole seconds, rounded up, at least 1 ([`DEFAULT_RETRY_AFTER`] when the
    /// refusal has no hint).
    ///
    /// `Retry-After` is always sent because clients read a 503 without it as a server error
    /// worth retrying (backstop's own [`HttpClassifier`](crate::classify::HttpClassifier)
    /// does), and a 503 with it as a refusal not to retry.
    ///
    /// ```
    /// use backstop::{OverloadReason, Overloaded};
    /// use std::time::Duration;
    ///
    /// let o = Overloaded::new(OverloadReason::Throttled).with_retry_after(Duration::from_millis(1200));
    /// let res: http::Response<String> = o.to_http_response();
    /// assert_eq!(res.status(), 429);
    /// assert_eq!(res.headers()["retry-after"], "2");
    /// ```
    pub fn to_http_response<B: Default>(&self) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = self.http_status();
        let after = self.retry_after().unwrap_or(DEFAULT_RETRY_AFTER);
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, retry_after_seconds(after).into());
        res
    }
}

/// The `Retry-After` of a refusal that names no time to come back.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whole seconds, rounded up, at least 1: a client told "0" would come straight back.
/// Saturates at `u64::MAX` (`Duration::MAX` has `u64::MAX` whole seconds and a fraction).
fn retry_after_seconds(after: Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
        .max(1)
}

/// Turns an [`Overloaded`] error (anywhere in the error's source chain) into its response, a
/// [`MissingClientKey`] (a throttle set to [`MissingKey::Refuse`](crate::throttle::MissingKey::Refuse))
/// into 400 Bad Request, and passes everything else through. Put it outermost in a server stack
/// with `ServiceBuilder::map_result(overload_to_response)`, so the refusals of every backstop
/// layer below become 429/503 answers:
///
/// ```
/// use backstop::throttle::{overload_to_response, HeaderKey, ShedFraction, ThrottleLayer};
/// use backstop::BoxError;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let shed = ShedFraction::builder("api").initial(1.0).build()?; // shed everyone
/// let svc = ServiceBuilder::new()
///     .map_result(overload_to_response)
///     .layer(ThrottleLayer::builder("throttle", HeaderKey::default()).shed(shed).build()?)
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, BoxError>(http::Response::new(String::from("hello")))
///     });
/// let res = svc.oneshot(http::Request::new(String::new())).await?;
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "1");
/// # Ok(())
/// # }
/// ```
pub fn overload_to_response<B: Default>(
    result: Result<http::Response<B>, BoxError>,
) -> Result<http::Response<B>, BoxError> {
    match result {
        Err(err) => match find_overload(err.as_ref()) {
            Some(overload) => Ok(overload.to_http_response()),
            None if find_in_chain::<MissingClientKey>(err.as_ref()).is_some() => {
                let mut res = http::Response::new(B::default());
                // Not an overload: the request cannot be served as sent, so no Retry-After.
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                Ok(res)
            }
            None => Err(err),
        },
        ok => ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_seconds(Duration::from_millis(3001)), 4);
        assert_eq!(retry_after_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn server_side_reasons_are_503() {
        for reason in [
            OverloadReason::QueueFull,
            OverloadReason::Shed,
            OverloadReason::AdmissionDenied,
            OverloadReason::BudgetExhausted,
        ] {
            let res: http::Response<()> = Overloaded::new(reason).to_http_response();
            assert_eq!(res.status(), 503);
            assert_eq!(res.headers()[http::header::RETRY_AFTER], "1");
        }
        let res: http::Response<()> =
            Overloaded::new(OverloadReason::RateLimited).to_http_response();
        assert_eq!(res.status(), 429);
    }

    #[test]
    fn backstop_clients_read_the_answer_as_an_overload() {
        use crate::classify::{Classify, HttpClassifier, Outcome};
        for reason in [OverloadReason::QueueFull, OverloadReason::Throttled] {
            let o = Overloaded::new(reason).with_retry_after(Duration::from_millis(2500));
            let res: http::Response<()> = o.to_http_response();
            let outcome = HttpClassifier.classify(Ok::<_, &BoxError>(&res));
            assert_eq!(outcome, Outcome::Overload(Some(Duration::from_secs(3))));
        }
    }

    #[test]
    fn a_missing_client_key_is_a_bad_request() {
        let res = overload_to_response::<()>(Err(MissingClientKey.into())).unwrap();
        assert_eq!(res.status(), 400);
        assert!(!res.headers().contains_key(http::header::RETRY_AFTER));
    }

    #[test]
    fn other_errors_pass_through() {
        let out = overload_to_response::<()>(Err("boom".into()));
        assert_eq!(out.unwrap_err().to_string(), "boom");
    }
}
