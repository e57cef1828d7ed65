//! The response future of [`Scope`](super::Scope).

use super::RequestContext;

/// A future that runs inside a request's scope: tokio's task-local future, which enters the
/// scope on every poll and leaves it before returning, so nothing else on the thread sees it.
pub type ScopedFuture<F> = tokio::task::futures::TaskLocalFuture<RequestContext, F>;
