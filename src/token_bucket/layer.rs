use std::time::Duration;

use tower_layer::Layer;

use super::{TokenBucket, TokenBucketService};
use crate::classify::DefaultClassifier;
use crate::error::{ConfigError, check};
use crate::timeout::{FromRequest, NoDeadline};

/// What the layer does when the bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse at once with `RateLimited` and the time until the next token.
    FailFast,
    /// Wait in line up to this long (and never past the request's deadline when `D` reads one).
    Wait(Duration),
}

/// Passes every request of a client through one shared [`TokenBucket`]; see the
/// [module docs](super).
///
/// `C` classifies responses for the bucket's adaptive rate; `D` says where a request's deadline
/// is read from when it waits ([`NoDeadline`] by default, [`FromRequest`] after
/// [`wait_until_deadline`](TokenBucketLayerBuilder::wait_until_deadline)).
///
/// ```
/// use backstop::token_bucket::{TokenBucket, TokenBucketLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // One bucket for the whole client: 2 at once, then 1 a second.
/// let bucket = TokenBucket::builder("inventory").capacity(2.0).rate(1.0).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(TokenBucketLayer::new(bucket))
///     .service_fn(|_req: ()| async { Ok::<_, backstop::BoxError>(()) });
/// assert!(svc.clone().oneshot(()).await.is_ok());
/// assert!(svc.clone().oneshot(()).await.is_ok());
/// let refused = svc.oneshot(()).await.unwrap_err(); // empty: refused at once
/// assert!(backstop::is_overload(refused.as_ref()));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TokenBucketLayer<C = DefaultClassifier, D = NoDeadline> {
    bucket: TokenBucket,
    mode: Mode,
    classifier: C,
    deadlines: D,
}

impl TokenBucketLayer {
    /// A layer that refuses at once when `bucket` is empty, reading outcomes with
    /// [`DefaultClassifier`] (HTTP semantics for `http::Response`).
    pub fn new(bucket: TokenBucket) -> Self {
        TokenBucketLayer {
            bucket,
            mode: Mode::FailFast,
            classifier: DefaultClassifier,
            deadlines: NoDeadline,
        }
    }

    /// Starts a builder around `bucket`: fail fast, [`DefaultClassifier`] (HTTP semantics for `http::Response`), no deadlines.
    pub fn builder(bucket: TokenBucket) -> TokenBucketLayerBuilder {
        TokenBucketLayerBuilder {
            bucket,
            wait: None,
            classifier: DefaultClassifier,
            deadlines: NoDeadline,
        }
    }
}

impl<C, D> TokenBucketLayer<C, D> {
    /// The shared bucket.
    pub fn bucket(&self) -> &TokenBucket {
        &self.bucket
    }
}

impl<S, C: Clone, D: Clone> Layer<S> for TokenBucketLayer<C, D> {
    type Service = TokenBucketService<S, C, D>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenBucketService::new(
            inner,
            self.bucket.clone(),
            self.mode,
            self.classifier.clone(),
            self.deadlines.clone(),
        )
    }
}

/// Builds a [`TokenBucketLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct TokenBucketLayerBuilder<C = DefaultClassifier, D = NoDeadline> {
    bucket: TokenBucket,
    wait: Option<Duration>,
    classifier: C,
    deadlines: D,
}

impl<C, D> TokenBucketLayerBuilder<C, D> {
    /// Waits up to `max_wait` for a token instead of refusing at once (first come, first
    /// served); greater than zero. `Duration::MAX` waits as long as it takes (or, with
    /// [`wait_until_deadline`](Self::wait_until_deadline), until the request's deadline).
    ///
    /// (The wait sleeps on tokio's timer: under `tokio::time::pause`, the bucket must read
    /// tokio's clock too: build it after the pause, so the default [`Clock`](super::Clock)
    /// chooses tokio's, or give it [`Clock::tokio`](super::Clock::tokio).)
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.wait = Some(max_wait);
        self
    }

    /// Refuses at once when the bucket is empty (the default).
    pub fn fail_fast(mut self) -> Self {
        self.wait = None;
        self
    }

    /// Also stops waiting at the request's [`Deadline`](crate::timeout::Deadline), read through
    /// [`HasDeadline`](crate::timeout::HasDeadline).
    pub fn wait_until_deadline(self) -> TokenBucketLayerBuilder<C, FromRequest> {
        self.deadlines(FromRequest)
    }

    /// Where a waiting request's deadline is read from (see
    /// [`DeadlineOf`](crate::timeout::DeadlineOf)).
    pub fn deadlines<D2>(self, deadlines: D2) -> TokenBucketLayerBuilder<C, D2> {
        TokenBucketLayerBuilder {
            bucket: self.bucket,
            wait: self.wait,
            classifier: self.classifier,
            deadlines,
        }
    }

    /// How responses are read for the adaptive rate: an
    /// [`Outcome::Overload`](crate::classify::Outcome::Overload) is a throttle.
    pub fn classifier<C2>(self, classifier: C2) -> TokenBucketLayerBuilder<C2, D> {
        TokenBucketLayerBuilder {
            bucket: self.bucket,
            wait: self.wait,
            classifier,
            deadlines: self.deadlines,
        }
    }

    /// Checks the values and builds the layer.
    pub fn build(self) -> Result<TokenBucketLayer<C, D>, ConfigError> {
        let mode = match self.wait {
            None => Mode::FailFast,
            Some(w) => Mode::Wait(check("max_wait", w, |w| !w.is_zero(), "greater than zero")?),
        };
        Ok(TokenBucketLayer {
            bucket: self.bucket,
            mode,
            classifier: self.classifier,
            deadlines: self.deadlines,
        })
    }
}
