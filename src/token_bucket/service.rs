use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::layer::Mode;
use super::{ResponseFuture, TokenBucket};
use crate::classify::Classify;
use crate::error::{BoxError, OverloadReason, Overloaded};
use crate::timeout::DeadlineOf;

/// A service behind a [`TokenBucketLayer`](super::TokenBucketLayer). Clones share the bucket.
///
/// Always ready: the token is taken in `call` (or waited for in the response future), and the
/// inner service is cloned per request and made ready only once the request holds its token, so
/// a request waiting for a token holds no readiness of the service below.
#[derive(Debug, Clone)]
pub struct TokenBucketService<S, C, D> {
    inner: S,
    bucket: TokenBucket,
    mode: Mode,
    classifier: C,
    deadlines: D,
}

impl<S, C, D> TokenBucketService<S, C, D> {
    pub(super) fn new(
        inner: S,
        bucket: TokenBucket,
        mode: Mode,
        classifier: C,
        deadlines: D,
    ) -> Self {
        TokenBucketService {
            inner,
            bucket,
            mode,
            classifier,
            deadlines,
        }
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &TokenBucket {
        &self.bucket
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, D, Req> Service<Req> for TokenBucketService<S, C, D>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Clone,
    D: DeadlineOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let bucket = self.bucket.clone();
        let classifier = self.classifier.clone();
        match self.mode {
            Mode::FailFast => {
                if bucket.try_acquire(1) {
                    ResponseFuture::running(bucket, classifier, self.inner.clone(), request)
                } else {
                    let mut refusal = Overloaded::new(OverloadReason::RateLimited);
                    if let Some(after) = bucket.time_until(1) {
                        refusal = refusal.with_retry_after(after);
                    }
                    ResponseFuture::refused(bucket, classifier, refusal)
                }
            }
            Mode::Wait(max_wait) => {
                let patience = Instant::now().checked_add(max_wait);
                let deadline = self.deadlines.deadline_of(&request).map(|d| d.instant());
                let give_up = match (patience, deadline) {
                    (Some(p), Some(d)) => Some(p.min(d)),
                    (p, d) => p.or(d),
                };
                ResponseFuture::waiting(bucket, classifier, give_up, self.inner.clone(), request)
            }
        }
    }
}
