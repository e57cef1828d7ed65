//! What the hedge layer reads from and writes on requests.

use std::fmt;

use crate::timeout::Deadline;

/// Hedge every request: the retry layer's policy (copies are not marked).
pub use crate::retry::AnyRequest;
/// The marker of a request safe to send twice: the retry layer's, so one mark allows both a
/// retry and a hedge.
pub use crate::retry::Idempotent;
/// Hedge the requests that say they may be sent twice, through
/// [`HedgeRequest::is_idempotent`] (for HTTP: a safe method, or the [`Idempotent`] extension).
pub use crate::retry::MarkedIdempotent;

/// Which duplicate of a hedged request this is: 1 for the first duplicate, 2 to 4 for further
/// ones ([`max_copies`](super::HedgeLayerBuilder::max_copies)). The layer marks only the
/// duplicates; the first copy, the request itself, goes out **unmarked**, so a request without a
/// `HedgeCopy` is copy 0 (marking every request would cost an allocation per call, for the few
/// that are ever duplicated). A load balancer below reads it to send copy 1 to an endpoint other
/// than the first copy's (a duplicate to the same slow server helps little): treat "absent" as
/// `HedgeCopy(0)`, e.g. `req.extensions().get::<HedgeCopy>().map_or(0, |c| c.0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HedgeCopy(pub u8);

/// A request the [`HedgeLayer`](super::HedgeLayer) can duplicate: it says whether it is
/// idempotent and its duplicates can be marked with their [`HedgeCopy`].
///
/// Implemented for `http::Request<B>` (feature `http`: hedged when its method is safe, GET,
/// HEAD, OPTIONS or TRACE, or its extensions hold [`Idempotent`], the retry layer's marker;
/// duplicates get a [`HedgeCopy`] extension, the first copy none) and for the simulator's requests. A PUT or DELETE,
/// retried by method, is not hedged unless marked: the two copies run at once, and the one that
/// answers first may see the other's effect. For your own type both methods have defaults:
///
/// ```
/// use backstop::hedge::{HedgeCopy, HedgeRequest};
///
/// #[derive(Clone)]
/// struct Get { key: String, copy: u8 }
///
/// impl HedgeRequest for Get {
///     fn is_idempotent(&self) -> bool { true }
///     fn mark_copy(&mut self, copy: HedgeCopy) { self.copy = copy.0 }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `HedgeRequest`, which `HedgeLayer` needs by default (or use `hedge_if`); it is implemented for `http::Request<B>` (https://docs.rs/backstop/latest/backstop/hedge/trait.HedgeRequest.html)"
)]
pub trait HedgeRequest {
    /// True when the request may safely be sent twice. Default: false.
    fn is_idempotent(&self) -> bool {
        false
    }
    /// Marks the request as duplicate `copy` (1 and up: the first copy is never marked).
    /// Default: does nothing.
    fn mark_copy(&mut self, copy: HedgeCopy) {
        let _ = copy;
    }
    /// True while a copy of the request can still be sent in full. Default: true. An HTTP
    /// request whose body is a [`ReplayBody`](crate::http::ReplayBody) that outgrew its limit
    /// or failed answers false, and is then not hedged.
    fn can_replay(&self) -> bool {
        true
    }
    /// The deadline the request carries: no copy goes out at or after it. Default: none (the
    /// [request context](crate::context)'s deadline still applies). An HTTP request answers
    /// its [`Deadline`] extension.
    fn deadline(&self) -> Option<Deadline> {
        None
    }
}

#[cfg(feature = "http")]
impl<B> HedgeRequest for http::Request<B> {
    fn is_idempotent(&self) -> bool {
        // Safe methods only, where the retry layer takes every idempotent one: a hedge runs
        // both copies at once, so a duplicate PUT or DELETE could answer first with what the
        // original's effect made of it (a 404, a 412), or land after a later write.
        self.method().is_safe() || self.extensions().get::<Idempotent>().is_some()
    }
    fn mark_copy(&mut self, copy: HedgeCopy) {
        self.extensions_mut().insert(copy);
    }
    fn can_replay(&self) -> bool {
        crate::http::replay::can_replay(self.extensions())
    }
    fn deadline(&self) -> Option<Deadline> {
        crate::timeout::HasDeadline::deadline(self)
    }
}

/// Decides which requests may be hedged; see
/// [`HedgeLayerBuilder::hedge_if`](super::HedgeLayerBuilder::hedge_if). Implemented for the
/// retry layer's [`MarkedIdempotent`] (the default) and [`AnyRequest`], and for [`HedgeFn`].
pub trait Hedgeable<Req> {
    /// True when `req` may be sent twice.
    fn allows(&self, req: &Req) -> bool;
    /// Marks a duplicate, copy 1 and up (by default through [`HedgeRequest::mark_copy`] where
    /// the request type has it; predicates over other types do nothing). The first copy is never
    /// marked.
    fn mark(&self, req: &mut Req, copy: HedgeCopy);
    /// The request's own deadline, after which no copy goes out (through
    /// [`HedgeRequest::deadline`] where the request type has it). Default: none; the
    /// [request context](crate::context)'s deadline applies either way.
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        let _ = req;
        None
    }
}

/// The default: a request may be hedged when it says it is idempotent.
impl<Req: HedgeRequest> Hedgeable<Req> for MarkedIdempotent {
    fn allows(&self, req: &Req) -> bool {
        req.is_idempotent() && req.can_replay()
    }
    fn mark(&self, req: &mut Req, copy: HedgeCopy) {
        req.mark_copy(copy)
    }
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        req.deadline()
    }
}

/// Every request may be hedged: the opt-in for services whose requests are all safe to repeat
/// (any request type; copies are not marked).
impl<Req> Hedgeable<Req> for AnyRequest {
    fn allows(&self, _req: &Req) -> bool {
        true
    }
    fn mark(&self, _req: &mut Req, _copy: HedgeCopy) {}
}

/// A request may be hedged when the closure says so (any request type; copies are not marked).
/// With HTTP, [`http_method_is_idempotent`](crate::retry::http_method_is_idempotent) is one.
#[derive(Clone, Copy)]
pub struct HedgeFn<F>(pub(super) F);

impl<F> fmt::Debug for HedgeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HedgeFn")
    }
}

impl<F, Req> Hedgeable<Req> for HedgeFn<F>
where
    F: Fn(&Req) -> bool,
{
    fn allows(&self, req: &Req) -> bool {
        (self.0)(req)
    }
    fn mark(&self, _req: &mut Req, _copy: HedgeCopy) {}
}
