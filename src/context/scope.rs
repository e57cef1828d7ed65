//! The task-scoped context and the scope that holds it.

use std::cell::Cell;
use std::future::Future;

use crate::timeout::{Deadline, HasDeadline};

use super::{Criticality, HasCriticality, ScopedFuture};

thread_local! {
    // The context of the scope the code on this thread runs in. Set only for the length of a
    // scope's poll (or `sync_scope` call) and restored after it, so a task that moves to another
    // thread takes nothing along and another task on this thread never sees it: tokio's
    // task-local does the same, but through a `RefCell<Option<T>>` and two accesses per entry.
    // A `Copy` value in a `Cell`, const-initialised and with nothing to drop, costs one access
    // and two writes, and can never be "destroyed" under a late poll.
    static CURRENT: Cell<RequestContext> = const { Cell::new(RequestContext::EMPTY) };
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
    const EMPTY: RequestContext = RequestContext {
        deadline: None,
        criticality: None,
    };

    /// An empty context: no deadline, no criticality.
    pub fn new() -> Self {
        RequestContext::EMPTY
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
    #[inline]
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
        ScopedFuture::new(self.within(current()), fut)
    }

    /// Runs `f` with this context as the current one (nested in the current scope, if any).
    pub fn sync_scope<T>(self, f: impl FnOnce() -> T) -> T {
        self.within(current()).enter(f)
    }

    /// Runs `f` with exactly this context as the current one, and restores the one before it
    /// afterwards (after a panic too). For callers that have already nested it in the scope
    /// around them: [`ScopedFuture`] and the timeout, which read that scope once and re-enter
    /// on every poll.
    #[inline]
    pub(crate) fn enter<T>(self, f: impl FnOnce() -> T) -> T {
        struct Restore(RequestContext);
        impl Drop for Restore {
            #[inline]
            fn drop(&mut self) {
                let _ = CURRENT.try_with(|c| c.set(self.0));
            }
        }
        let _restore = CURRENT.try_with(|c| c.replace(self)).ok().map(Restore);
        f()
    }
}

/// The context of the scope this code runs in; empty outside any scope.
#[inline]
pub fn current() -> RequestContext {
    CURRENT.try_with(Cell::get).unwrap_or_default()
}

/// The current scope's deadline, if any.
pub fn current_deadline() -> Option<Deadline> {
    current().deadline
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
    current().criticality
}

/// `fut` carrying the current context, for any executor: the scope is captured now and entered
/// on every poll.
pub fn in_current_scope<F: Future>(fut: F) -> ScopedFuture<F> {
    ScopedFuture::new(current(), fut)
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
