//! The response future of [`Scope`](super::Scope).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::{pin_project, pinned_drop};

use super::RequestContext;

/// A future that runs inside a request's scope: it enters the scope on every poll and leaves it
/// before returning, so nothing else on the thread sees it, and it is dropped inside the scope
/// too (a destructor that cancels downstream work still knows its deadline).
///
/// Made by [`RequestContext::scope`], [`in_current_scope`](super::in_current_scope) and the
/// [`Scope`](super::Scope) service.
#[pin_project(PinnedDrop)]
pub struct ScopedFuture<F> {
    context: RequestContext,
    // `None` only while it is dropped in the scope.
    #[pin]
    future: Option<F>,
}

impl<F> ScopedFuture<F> {
    pub(super) fn new(context: RequestContext, future: F) -> Self {
        ScopedFuture {
            context,
            future: Some(future),
        }
    }

    /// The context this future runs in.
    pub fn context(&self) -> RequestContext {
        self.context
    }
}

// By hand: any future, `Debug` or not (a handler's `async` block is not).
impl<F> std::fmt::Debug for ScopedFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedFuture")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for ScopedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => this.context.enter(|| future.poll(cx)),
            // Unreachable: the future is taken only by the destructor.
            None => Poll::Pending,
        }
    }
}

#[pinned_drop]
impl<F> PinnedDrop for ScopedFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        if this.future.is_some() {
            this.context.enter(|| this.future.set(None));
        }
    }
}
