use std::time::Duration;

use tower_layer::Layer;

use super::Timeout;
use crate::error::{ConfigError, check};

/// Applies a timeout that also respects, and shrinks, the caller's [`Deadline`](super::Deadline).
///
/// Build it with [`TimeoutLayer::builder`]; see the [module docs](super) for the rules.
///
/// It allocates nothing per request. An `http::Request` that arrives without a deadline is left
/// as it is, and the layers below read the deadline from the [request context](crate::context)
/// the layer enters around them; that scope does not cross into a task that a layer below
/// (tower's `Buffer`) calls the rest of the stack from. Build with
/// [`always_write_deadline`](TimeoutLayerBuilder::always_write_deadline) for such a stack: the
/// deadline then travels in the request, for one extension allocation per request.
///
/// ```
/// use backstop::timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_millis(100))?)
///     .service_fn(|_req: http::Request<()>| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, backstop::BoxError>(())
///     });
/// let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
/// assert!(backstop::is_timeout(err.as_ref()));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
    fraction: f64,
    always_write: bool,
}

impl TimeoutLayer {
    /// A layer with its own `timeout` and the default deadline fraction of 0.9.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Self::builder().timeout(timeout).build()
    }

    /// Starts a builder with the defaults: a 1 s timeout and a fraction of 0.9.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder::default()
    }

    /// The layer's own timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The share of the caller's remaining time this layer gives the layers below it.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether it writes the deadline into every request
    /// ([`always_write_deadline`](TimeoutLayerBuilder::always_write_deadline)).
    pub fn always_writes_deadline(&self) -> bool {
        self.always_write
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout, self.fraction, self.always_write)
    }
}

/// Builds a [`TimeoutLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayerBuilder {
    timeout: Duration,
    fraction: f64,
    always_write: bool,
}

impl Default for TimeoutLayerBuilder {
    fn default() -> Self {
        TimeoutLayerBuilder {
            timeout: Duration::from_secs(1),
            fraction: 0.9,
            always_write: false,
        }
    }
}

impl TimeoutLayerBuilder {
    /// The layer's own timeout, counted from the moment the service is first polled for
    /// readiness for this request. Must be greater than zero. Any longer value is accepted:
    /// past about a century (up to `Duration::MAX`) the timer is set a century out, which no
    /// request reaches. Default 1 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The share of the caller's remaining time that this layer allows: the effective timeout is
    /// `min(timeout, remaining × fraction)`. Must be in (0, 1] (NaN is refused). Default 0.9,
    /// which leaves a tenth of the caller's time for the answer to travel back.
    pub fn fraction(mut self, fraction: f64) -> Self {
        self.fraction = fraction;
        self
    }

    /// Also writes the deadline into requests that carry none, for stacks that call the layers
    /// below on another task. Off by default.
    ///
    /// By default a request without a deadline is left untouched when writing one would
    /// allocate (an `http::Request`: a boxed extension entry, and the map itself): the layers
    /// below read the deadline from the [request context](crate::context), which the layer
    /// enters around the inner `call` and on every poll of its response future. That scope
    /// belongs to the caller's task, so a service that calls its inner service on a task of its
    /// own, as tower's `Buffer` does on its worker, hides it from everything below it at `call`
    /// time: a timeout, a queue or a token bucket there sees no deadline. With this option the
    /// deadline travels in the request instead, at the cost of that allocation per request.
    pub fn always_write_deadline(mut self) -> Self {
        self.always_write = true;
        self
    }

    /// Checks the values and builds the layer.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        let timeout = check(
            "timeout",
            self.timeout,
            |t| !t.is_zero(),
            "greater than zero",
        )?;
        let fraction = check(
            "fraction",
            self.fraction,
            |f| *f > 0.0 && *f <= 1.0,
            "in (0, 1]",
        )?;
        Ok(TimeoutLayer {
            timeout,
            fraction,
            always_write: self.always_write,
        })
    }
}
