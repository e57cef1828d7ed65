//! The task-local scope and the context it holds.

use std::future::Future;

use crate::timeout::{Deadline, HasDeadline};

use super::{Criticality, HasCriticality, ScopedFuture};

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// What a request carries that the calls made while serving it inherit: its deadline and its
/// [`Criticality`].
///
/// Small and `Copy`; open a scope with [`scope`](Self::scope), read it with [`current`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestContext {
    deadline: Option<Deadline>,
    criticality: Option<Criticality>,
}

impl RequestContext {
    /// An empty context: no deadline, no criticality.
    pub fn new() -> Self {
        RequestContext::default()
    }

    /// The context a request carries.
    pub fn of<R: HasDeadline + HasCriticality + ?Sized>(req: &R) -> Self {
        RequestContext {
            deadline: req.deadline(),
            criticality: req.criticality(),
        }
    }

    /// This context with `deadline`.
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// This context with `criticality`.
    pub fn with_criticality(mut self, criticality: Criticality) -> Self {
        self.criticality = Some(criticality);
        self
    }

    /// The criticality, if any.
    pub fn criticality(&self) -> Option<Criticality> {
        self.criticality
    }

    /// This context as seen inside `outer`: the earlier deadline wins, so a nested scope never
    /// gives its calls more time than the scope around it has. The inner criticality wins when
    /// it has one, as a request's own tag wins over its scope's: a handler may send its
    /// background prefetch as `Sheddable` while serving a `Critical` request.
    pub fn within(self, outer: RequestContext) -> Self {
        RequestContext {
            deadline: match (self.deadline, outer.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            criticality: self.criticality.or(outer.criticality),
        }
    }

    /// Runs `fut` with this context as the current one (nested in the current scope, if any).
    pub fn scope<F: Future>(self, fut: F) -> ScopedFuture<F> {
        CONTEXT.scope(self.within(current()), fut)
    }

    /// Runs `f` with this context as the current one (nested in the current scope, if any).
    pub fn sync_scope<T>(self, f: impl FnOnce() -> T) -> T {
        CONTEXT.sync_scope(self.within(current()), f)
    }

    /// Runs `f` with exactly this context as the current one: for a caller that has already
    /// nested it in the scope around it (the timeout, which read that scope in `call` and
    /// re-enters on every poll), so no poll pays for a second task-local read.
    pub(crate) fn enter<T>(self, f: impl FnOnce() -> T) -> T {
        CONTEXT.sync_scope(self, f)
    }
}

/// The context of the scope this code runs in; empty outside any scope.
pub fn current() -> RequestContext {
    CONTEXT.try_with(|c| *c).unwrap_or_default()
}

/// The current scope's deadline, if any.
pub fn current_deadline() -> Option<Deadline> {
    CONTEXT.try_with(|c| c.deadline).ok().flatten()
}

/// The deadline a layer or handler should work to: the one `req` carries, else the current
/// scope's. The precedence every backstop reader of a deadline follows; a
/// [`TimeoutLayer`](crate::timeout::TimeoutLayer) may leave a request without one and hand its
/// deadline down in the scope instead (see its module docs), so code below a timeout reads it
/// here rather than from `req.deadline()` alone.
pub fn effective_deadline<R: HasDeadline + ?Sized>(req: &R) -> Option<Deadline> {
    req.deadline().or_else(current_deadline)
}

/// The current scope's criticality, if any.
pub fn current_criticality() -> Option<Criticality> {
    CONTEXT.try_with(|c| c.criticality).ok().flatten()
}

/// `fut` carrying the current context, for any executor: the scope is captured now and entered
/// on every poll.
pub fn in_current_scope<F: Future>(fut: F) -> ScopedFuture<F> {
    CONTEXT.scope(current(), fut)
}

/// `tokio::spawn` for a task that belongs to the request being served: it inherits the current
/// context, so its calls keep the request's deadline and criticality. Use `tokio::spawn` for work that should
/// outlive the request.
///
/// Needs a tokio runtime, as `tokio::spawn` does.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current_scope(fut))
}
