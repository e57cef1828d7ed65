//! A deadline for request types that have no room for one.

use std::ops::{Deref, DerefMut};

use super::{Deadline, HasDeadline};

/// Any request with a [`Deadline`] alongside it, so the layers that need [`HasDeadline`]
/// ([`TimeoutLayer`](super::TimeoutLayer), and by default
/// [`LifoQueueLayer`](crate::lifo_queue::LifoQueueLayer)) accept a request type you cannot or
/// would rather not change. It dereferences to the request.
///
/// ```
/// use backstop::timeout::{HasDeadline, TimeoutLayer, WithDeadline};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// struct Query { sql: String }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// let db = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(1))?)
///     .service_fn(|q: WithDeadline<Query>| async move {
///         // The handler reads the query through `Deref` and the budget through `HasDeadline`.
///         Ok::<_, backstop::BoxError>((q.sql.len(), q.deadline().unwrap().remaining()))
///     });
/// let (len, left) = db.oneshot(WithDeadline::new(Query { sql: "SELECT 1".into() })).await?;
/// assert_eq!((len, left), (8, Duration::from_secs(1)));
/// # Ok(())
/// # }
/// ```
///
/// [`RetryLayer`](crate::retry::RetryLayer) also needs
/// [`RetryRequest`](crate::retry::RetryRequest), which the orphan rule does not let you
/// implement for `WithDeadline<YourType>`: there, implement both traits on your own type (see
/// [`HasDeadline`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct WithDeadline<T> {
    /// The request itself.
    pub request: T,
    /// The deadline it carries: `None` until the caller or a layer sets one.
    pub deadline: Option<Deadline>,
}

impl<T> WithDeadline<T> {
    /// `request`, with no deadline yet.
    pub fn new(request: T) -> Self {
        WithDeadline {
            request,
            deadline: None,
        }
    }

    /// The request, without its deadline.
    pub fn into_inner(self) -> T {
        self.request
    }
}

impl<T> From<T> for WithDeadline<T> {
    fn from(request: T) -> Self {
        WithDeadline::new(request)
    }
}

impl<T> HasDeadline for WithDeadline<T> {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

impl<T> Deref for WithDeadline<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.request
    }
}

impl<T> DerefMut for WithDeadline<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.request
    }
}
