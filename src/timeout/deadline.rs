//! The deadline a request carries, and how it travels.

use std::time::Duration;

use tokio::time::Instant;

/// The instant by which the caller needs an answer.
///
/// It travels with the request (in `http::Extensions` for HTTP requests, see [`HasDeadline`]), so
/// every layer below can tell how much time is left. Times come from [`tokio::time::Instant`], so
/// a paused test clock drives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// A deadline `budget` from now. A budget too large to represent is capped at about a
    /// century, which is the same as no deadline for any request.
    pub fn after(budget: Duration) -> Self {
        Deadline::after_from(Instant::now(), budget)
    }

    pub(crate) fn after_from(now: Instant, budget: Duration) -> Self {
        Deadline(
            now.checked_add(budget)
                .or_else(|| now.checked_add(crate::error::FOREVER))
                .unwrap_or(now),
        )
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// True once the deadline has passed.
    pub fn is_expired(self) -> bool {
        self.0 <= Instant::now()
    }
}

/// A request that can carry a [`Deadline`].
///
/// Implemented for `http::Request<B>` and `http::Extensions` (feature `http`) and for any
/// request wrapped in [`WithDeadline`](super::WithDeadline). For your own request type, store an
/// `Option<Deadline>` in it:
///
/// ```
/// use backstop::timeout::{Deadline, HasDeadline};
///
/// struct Query { sql: String, deadline: Option<Deadline> }
///
/// impl HasDeadline for Query {
///     fn deadline(&self) -> Option<Deadline> { self.deadline }
///     fn set_deadline(&mut self, deadline: Deadline) { self.deadline = Some(deadline) }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `HasDeadline`: backstop's layers cannot read or set its deadline",
    label = "this request type carries no `Deadline`",
    note = "`TimeoutLayer`, `RetryLayer`, `LifoQueueLayer` (unless `ignore_deadlines()`) and `TokenBucketLayer` \
            with `wait_until_deadline()` need `HasDeadline` on the request; it is implemented for \
            `http::Request<B>`; wrap other types in `backstop::timeout::WithDeadline` or implement it \
            (https://docs.rs/backstop/latest/backstop/timeout/trait.HasDeadline.html)"
)]
pub trait HasDeadline {
    /// The deadline the request carries, if any.
    ///
    /// Below a [`TimeoutLayer`](super::TimeoutLayer), an `http::Request` that came without a
    /// deadline still has none here: the layer hands its deadline down in the request context's
    /// scope instead (no allocation per request). Code below a timeout that needs the deadline
    /// in force reads [`context::effective_deadline`](crate::context::effective_deadline) (the
    /// request's, else the scope's), as every backstop layer does; an axum handler that takes
    /// `Extension<Deadline>` needs the layer's
    /// [`always_write_deadline`](super::TimeoutLayerBuilder::always_write_deadline).
    fn deadline(&self) -> Option<Deadline>;
    /// Replaces the deadline the request carries.
    fn set_deadline(&mut self, deadline: Deadline);

    /// Whether [`set_deadline`](Self::set_deadline) on a request that carries no deadline yet
    /// costs nothing (no allocation).
    ///
    /// [`TimeoutLayer`](super::TimeoutLayer) asks it of a request that carries no deadline:
    /// where it is `false`, the layer hands the deadline to the layers below through the
    /// [request context](crate::context) instead of writing it. `true` by default, right for a
    /// type that keeps an `Option<Deadline>` inline; `false` for `http::Request`, whose
    /// extensions would box it (and create their map first if it has none).
    fn sets_deadline_for_free(&self) -> bool {
        true
    }
}

#[cfg(feature = "http")]
impl HasDeadline for http::Extensions {
    fn deadline(&self) -> Option<Deadline> {
        self.get::<Deadline>().copied()
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        // Overwrite in place when a layer above already set one: no allocation per layer.
        match self.get_mut::<Deadline>() {
            Some(existing) => *existing = deadline,
            None => {
                self.insert(deadline);
            }
        }
    }
    fn sets_deadline_for_free(&self) -> bool {
        false
    }
}

#[cfg(feature = "http")]
impl<B> HasDeadline for http::Request<B> {
    fn deadline(&self) -> Option<Deadline> {
        self.extensions().deadline()
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.extensions_mut().set_deadline(deadline);
    }
    fn sets_deadline_for_free(&self) -> bool {
        false
    }
}
