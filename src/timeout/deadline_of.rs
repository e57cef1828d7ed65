//! How a layer that waits finds a request's deadline.

use super::{Deadline, HasDeadline};

/// Where a layer that waits reads a request's deadline from: the
/// [`LifoQueue`](crate::lifo_queue::LifoQueue), and the
/// [`TokenBucketLayer`](crate::token_bucket::TokenBucketLayer) with `wait_until_deadline()`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot read the deadline of a `{Req}` request",
    note = "`FromRequest` (the default of `LifoQueueLayer`, and of `TokenBucketLayer` after \
            `wait_until_deadline`) needs `{Req}: HasDeadline`; `NoDeadline` (`ignore_deadlines()`) \
            reads none (https://docs.rs/backstop/latest/backstop/timeout/trait.DeadlineOf.html)"
)]
pub trait DeadlineOf<Req> {
    /// The request's deadline, if it has one. Read only when the request has to wait.
    fn deadline_of(&self, request: &Req) -> Option<Deadline>;
}

/// Reads the deadline the request carries ([`HasDeadline`]), or else the deadline of the
/// [request context](crate::context) it is sent from; the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromRequest;

impl<Req: HasDeadline> DeadlineOf<Req> for FromRequest {
    fn deadline_of(&self, request: &Req) -> Option<Deadline> {
        crate::context::effective_deadline(request)
    }
}

/// Ignores deadlines: only the CoDel bound sheds. For request types without [`HasDeadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadline;

impl<Req> DeadlineOf<Req> for NoDeadline {
    fn deadline_of(&self, _request: &Req) -> Option<Deadline> {
        None
    }
}
