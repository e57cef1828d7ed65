//! How an outcome counts: success, worth a retry, an overload, or final.
//!
//! The retry, hedge, token-bucket, admission and metrics layers all read outcomes through the one
//! [`Classify`] trait, so a service that answers "slow down" in its own way (a status code, a gRPC
//! code, a field in a body) teaches every layer at once by supplying one classifier.
//!
//! The rule that keeps overload from turning into more load: an [`Outcome::Overload`] is never
//! retryable. Throttling answers go straight back to the caller.
//!
//! Classifiers provided:
//! - [`DefaultClassifier`], what every layer uses unless told otherwise: HTTP semantics for an
//!   `http::Response` (feature `http`), and for any other response type what its
//!   [`DefaultClassify`] implementation says (for std types: every `Ok` is a success, errors are
//!   read as [`ErrorClassifier`] reads them). An HTTP stack therefore needs no `.classifier(...)`
//!   call to treat a 429 as an overload and a 5xx as retryable.
//! - [`ErrorClassifier`] for plain `Result<T, BoxError>`: any `Ok` is a success, an
//!   [`Overloaded`](crate::Overloaded) anywhere in the error's chain is an overload, timeouts and
//!   other (transport) errors are retryable, and a [`ConfigError`] is final.
//! - [`HttpClassifier`] (feature `http`) for `Result<http::Response<B>, BoxError>`: 5xx retryable;
//!   429, and 503 with `Retry-After`, overload; other 4xx final.
//! - `backstop::grpc::GrpcClassifier` (feature `grpc`) for gRPC answers: the
//!   `grpc-status` and `grpc-retry-pushback-ms` they carry; with the feature on, the default
//!   classifier applies it to every `http::Response` that is a gRPC answer.
//! - [`classify_fn`], a closure adapter.
//!
//! ```
//! use backstop::classify::{Classify, ErrorClassifier, Outcome};
//! use backstop::{BoxError, Overloaded, OverloadReason};
//!
//! let ok: Result<u32, BoxError> = Ok(7);
//! assert_eq!(ErrorClassifier.classify(ok.as_ref()), Outcome::Success);
//!
//! let shed: Result<u32, BoxError> = Err(Overloaded::new(OverloadReason::Shed).into());
//! assert_eq!(ErrorClassifier.classify(shed.as_ref()), Outcome::Overload(None));
//! ```

use std::time::Duration;

use crate::error::{BoxError, ConfigError, find_in_chain, find_overload};

/// What an outcome means to the layers that react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request did its work.
    Success,
    /// A transient failure that another attempt may fix (5xx, a reset connection, a timeout).
    Retryable,
    /// The server, or a layer on the way, asked for less load; never retried. Carries the
    /// server's hint of when to come back, when it gave one.
    Overload(Option<Duration>),
    /// A failure another attempt will not fix (a 4xx, a bad configuration).
    Final,
}

impl Outcome {
    /// True only for [`Outcome::Retryable`]: an overload is never retryable.
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::Retryable)
    }

    /// True for [`Outcome::Overload`].
    pub fn is_overload(self) -> bool {
        matches!(self, Outcome::Overload(_))
    }

    /// A short, stable name used in metric labels: `success`, `overload` or `error`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Overload(_) => "overload",
            Outcome::Retryable | Outcome::Final => "error",
        }
    }
}

/// Maps the outcome of a call to what it means for retries, hedges, buckets and metrics.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify a `Result<{Res}, {E}>`",
    label = "not a classifier for `{Res}` responses",
    note = "`HttpClassifier` reads `http::Response<B>`; `ErrorClassifier` reads any response with \
            `BoxError` errors; `classify_fn` wraps a closure for other types; layers need the inner \
            service's `Error` to be `BoxError` or to convert into it \
            (https://docs.rs/backstop/latest/backstop/classify/trait.Classify.html)"
)]
pub trait Classify<Res, E> {
    /// Classifies one finished call.
    fn classify(&self, outcome: Result<&Res, &E>) -> Outcome;

    /// The earliest time a retry of this [`Retryable`](Outcome::Retryable) call may be sent,
    /// when the server said (gRPC's `grpc-retry-pushback-ms`). The retry layer waits at least
    /// this long, or does not retry when that passes the deadline; the adaptive token bucket
    /// counts a call with a pushback as a throttle. Default: none.
    fn pushback(&self, outcome: Result<&Res, &E>) -> Option<Duration> {
        let _ = outcome;
        None
    }
}

/// The classifier for plain `Result<T, BoxError>` services.
///
/// `Ok` is a success whatever it holds; an error is an overload when an
/// [`Overloaded`](crate::Overloaded) sits anywhere in its source chain, final when it is a
/// [`ConfigError`], and retryable otherwise (timeouts and transport errors).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorClassifier;

impl ErrorClassifier {
    /// Classifies an error alone.
    pub fn classify_error(&self, err: &BoxError) -> Outcome {
        let err = err.as_ref() as &(dyn std::error::Error + 'static);
        if let Some(overload) = find_overload(err) {
            Outcome::Overload(overload.retry_after())
        } else if find_in_chain::<ConfigError>(err).is_some() {
            Outcome::Final
        } else {
            Outcome::Retryable
        }
    }
}

impl<Res> Classify<Res, BoxError> for ErrorClassifier {
    fn classify(&self, outcome: Result<&Res, &BoxError>) -> Outcome {
        match outcome {
            Ok(_) => Outcome::Success,
            Err(err) => self.classify_error(err),
        }
    }
}

/// The classifier every layer uses unless given another: it asks the response type.
///
/// For `http::Response<B>` (feature `http`) that is [`HttpClassifier`]'s mapping; for the std
/// types (`()`, numbers, `String`, `Vec<T>`, `Option<T>`, tuples, ...) every `Ok` is a success.
/// Errors are read by [`ErrorClassifier`] whatever the response type. A response type of your
/// own opts in with an empty `impl DefaultClassify for MyResponse {}` (every `Ok` a success) or
/// a method that reads it; or give the layer a classifier of its own.
///
/// ```
/// use backstop::classify::{Classify, DefaultClassifier, DefaultClassify, Outcome};
/// use backstop::BoxError;
///
/// // HTTP answers are read as HTTP.
/// let busy = http::Response::builder().status(429).body(()).unwrap();
/// assert_eq!(DefaultClassifier.classify(Ok::<_, &BoxError>(&busy)), Outcome::Overload(None));
///
/// // A response type of your own.
/// struct Reply { code: u8 }
/// impl DefaultClassify for Reply {
///     fn default_outcome(&self) -> Outcome {
///         if self.code == 0 { Outcome::Success } else { Outcome::Final }
///     }
/// }
/// assert_eq!(DefaultClassifier.classify(Ok::<_, &BoxError>(&Reply { code: 2 })), Outcome::Final);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

/// How a response type is classified by [`DefaultClassifier`], the layers' default.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no default classification",
    label = "the layer's default classifier cannot read `{Self}` responses",
    note = "add `impl backstop::classify::DefaultClassify for {Self} {{}}` (every `Ok` is then a \
            success), or give the layer a classifier with `.classifier(...)` / \
            `.with_classifier(...)` (`ErrorClassifier` reads any response type)"
)]
pub trait DefaultClassify {
    /// What a successful call that returned `self` means. Default: a success.
    fn default_outcome(&self) -> Outcome {
        Outcome::Success
    }
    /// True when the response says a retry layer below already decided about it (HTTP: the
    /// `backstop-retried` header). Default: false.
    fn carries_retried_marker(&self) -> bool {
        false
    }
    /// Marks the response as decided about by a retry layer. Default: does nothing (errors are
    /// marked whatever the response type).
    fn set_retried_marker(&mut self) {}
    /// The earliest time a retry may be sent, when the response says
    /// ([`Classify::pushback`]). Default: none.
    fn default_pushback(&self) -> Option<Duration> {
        None
    }
}

impl<Res: DefaultClassify> Classify<Res, BoxError> for DefaultClassifier {
    fn classify(&self, outcome: Result<&Res, &BoxError>) -> Outcome {
        match outcome {
            Ok(res) => res.default_outcome(),
            Err(err) => ErrorClassifier.classify_error(err),
        }
    }

    fn pushback(&self, outcome: Result<&Res, &BoxError>) -> Option<Duration> {
        outcome.ok().and_then(DefaultClassify::default_pushback)
    }
}

macro_rules! success_by_default {
    ($($t:ty),* $(,)?) => { $(impl DefaultClassify for $t {})* };
}

success_by_default!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    &'static str,
    Duration,
    std::time::Instant,
    tokio::time::Instant,
);

impl<T> DefaultClassify for Vec<T> {}
impl<T> DefaultClassify for Option<T> {}
impl<T: ?Sized> DefaultClassify for Box<T> {}
impl<T: ?Sized> DefaultClassify for std::sync::Arc<T> {}
impl<A, B> DefaultClassify for (A, B) {}
impl<A, B, C> DefaultClassify for (A, B, C) {}
impl<A, B, C, D> DefaultClassify for (A, B, C, D) {}
#[cfg(feature = "http")]
impl DefaultClassify for bytes::Bytes {}

/// A classifier made from a closure; see [`classify_fn`].
#[derive(Debug, Clone, Copy)]
pub struct ClassifyFn<F>(F);

/// Makes a classifier from a closure.
///
/// ```
/// use backstop::classify::{classify_fn, Classify, Outcome};
///
/// // A service that answers with a status number.
/// let by_status = classify_fn(|r: Result<&u16, &std::io::Error>| match r {
///     Ok(429) => Outcome::Overload(None),
///     Ok(s) if *s >= 500 => Outcome::Retryable,
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Retryable,
/// });
/// assert_eq!(by_status.classify(Ok(&429)), Outcome::Overload(None));
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    fn classify(&self, outcome: Result<&Res, &E>) -> Outcome {
        (self.0)(outcome)
    }
}

#[cfg(feature = "http")]
pub use self::http_classify::HttpClassifier;

#[cfg(feature = "http")]
mod http_classify {
    use super::*;
    use ::http::{HeaderMap, Response, StatusCode, header::RETRY_AFTER};

    /// The standard HTTP mapping: 2xx and 3xx success; 5xx retryable, except 504; 429, and 503
    /// with a `Retry-After` header, overload; other 4xx, and 504, final. Errors are read by
    /// [`ErrorClassifier`].
    ///
    /// A 503 without `Retry-After` stays retryable: many proxies answer 503 for a dead upstream,
    /// which another server may well serve. A 504 is final: under deadline propagation it says
    /// the time the caller gave has run out below (a backstop server answers a passed deadline
    /// with it), and a retry with what is left of the same deadline only adds load; timeouts are
    /// the worst thing to retry.
    ///
    /// ```
    /// use backstop::classify::{Classify, HttpClassifier, Outcome};
    /// use backstop::BoxError;
    /// use std::time::Duration;
    ///
    /// let res = http::Response::builder().status(429).header("retry-after", "3").body(()).unwrap();
    /// let outcome = HttpClassifier.classify(Ok::<_, &BoxError>(&res));
    /// assert_eq!(outcome, Outcome::Overload(Some(Duration::from_secs(3))));
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpClassifier;

    impl HttpClassifier {
        /// Classifies a status and its headers.
        pub fn classify_status(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
            let retry_after = retry_after_seconds(headers);
            match status {
                StatusCode::TOO_MANY_REQUESTS => Outcome::Overload(retry_after),
                StatusCode::SERVICE_UNAVAILABLE if retry_after.is_some() => {
                    Outcome::Overload(retry_after)
                }
                StatusCode::GATEWAY_TIMEOUT => Outcome::Final,
                s if s.is_server_error() => Outcome::Retryable,
                s if s.is_client_error() => Outcome::Final,
                _ => Outcome::Success,
            }
        }
    }

    impl<B> Classify<Response<B>, BoxError> for HttpClassifier {
        fn classify(&self, outcome: Result<&Response<B>, &BoxError>) -> Outcome {
            match outcome {
                Ok(res) => self.classify_status(res.status(), res.headers()),
                Err(err) => ErrorClassifier.classify_error(err),
            }
        }
    }

    /// HTTP's mapping, or gRPC's for a gRPC answer when the `grpc` feature is on
    /// (`backstop::grpc::GrpcClassifier`).
    impl<B> DefaultClassify for Response<B> {
        fn default_outcome(&self) -> Outcome {
            #[cfg(feature = "grpc")]
            if crate::grpc::classify::is_grpc_response(self) {
                return crate::grpc::GrpcClassifier.classify_response(self);
            }
            HttpClassifier.classify_status(self.status(), self.headers())
        }
        #[cfg(feature = "grpc")]
        fn default_pushback(&self) -> Option<Duration> {
            crate::grpc::GrpcClassifier.pushback_of(self)
        }
        fn carries_retried_marker(&self) -> bool {
            self.headers().contains_key(crate::retry::RETRIED_HEADER)
        }
        fn set_retried_marker(&mut self) {
            self.headers_mut().insert(
                ::http::HeaderName::from_static(crate::retry::RETRIED_HEADER),
                ::http::HeaderValue::from_static("1"),
            );
        }
    }

    /// Reads `Retry-After` given in whole seconds (the HTTP-date form is not read: it needs a
    /// wall clock, and backstop runs on tokio's clock).
    pub(crate) fn retry_after_seconds(headers: &HeaderMap) -> Option<Duration> {
        let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        value.parse::<u64>().ok().map(Duration::from_secs)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn status(code: u16, retry_after: Option<&str>) -> Outcome {
            let mut b = Response::builder().status(code);
            if let Some(v) = retry_after {
                b = b.header(RETRY_AFTER, v);
            }
            let res = b.body(()).unwrap();
            HttpClassifier.classify(Ok::<_, &BoxError>(&res))
        }

        #[test]
        fn http_statuses_map_as_documented() {
            assert_eq!(status(200, None), Outcome::Success);
            assert_eq!(status(304, None), Outcome::Success);
            assert_eq!(status(500, None), Outcome::Retryable);
            assert_eq!(status(502, None), Outcome::Retryable);
            assert_eq!(status(504, None), Outcome::Final);
            assert_eq!(status(503, None), Outcome::Retryable);
            assert_eq!(
                status(503, Some("7")),
                Outcome::Overload(Some(Duration::from_secs(7)))
            );
            assert_eq!(status(429, None), Outcome::Overload(None));
            assert_eq!(
                status(429, Some(" 2 ")),
                Outcome::Overload(Some(Duration::from_secs(2)))
            );
            assert_eq!(status(404, None), Outcome::Final);
            assert_eq!(status(400, Some("5")), Outcome::Final);
        }

        #[test]
        fn an_unreadable_retry_after_is_ignored() {
            assert_eq!(status(429, Some("soon")), Outcome::Overload(None));
            assert_eq!(
                status(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
                Outcome::Retryable
            );
        }

        #[test]
        fn errors_go_through_the_error_classifier() {
            let err: BoxError = crate::Overloaded::new(crate::OverloadReason::Throttled).into();
            let r: Result<&Response<()>, &BoxError> = Err(&err);
            assert_eq!(HttpClassifier.classify(r), Outcome::Overload(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OverloadReason, Overloaded};

    #[test]
    fn overloads_are_never_retryable() {
        let err: BoxError = Overloaded::new(OverloadReason::RateLimited)
            .with_retry_after(Duration::from_millis(250))
            .into();
        let outcome = ErrorClassifier.classify(Err::<&(), _>(&err));
        assert_eq!(outcome, Outcome::Overload(Some(Duration::from_millis(250))));
        assert!(!outcome.is_retryable());
    }

    #[test]
    fn transport_errors_and_timeouts_are_retryable_and_config_errors_final() {
        let reset: BoxError = "connection reset".into();
        assert_eq!(
            ErrorClassifier.classify(Err::<&(), _>(&reset)),
            Outcome::Retryable
        );
        let timeout: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            ErrorClassifier.classify(Err::<&(), _>(&timeout)),
            Outcome::Retryable
        );
        let bad: BoxError = ConfigError::new("x", 0, "positive").into();
        assert_eq!(
            ErrorClassifier.classify(Err::<&(), _>(&bad)),
            Outcome::Final
        );
    }

    #[test]
    fn labels_fold_errors_together() {
        assert_eq!(Outcome::Success.label(), "success");
        assert_eq!(Outcome::Overload(None).label(), "overload");
        assert_eq!(Outcome::Retryable.label(), "error");
        assert_eq!(Outcome::Final.label(), "error");
    }
}
