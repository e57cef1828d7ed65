//! One request context that follows a request through its handler to the calls it makes.
//!
//! A server learns its caller's deadline from the request (`grpc-timeout`, read by
//! [`inherit_deadline`](crate::timeout::headers::inherit_deadline)), but the handler's own
//! outgoing calls are separate requests: unless someone copies the deadline by hand, the next
//! service down starts from nothing and keeps working after the first caller has left. Finagle
//! and gRPC-Go pass the deadline on through a context object; this module does the same for
//! tower stacks with a task-scoped value (set on the thread only while the task's future is
//! being polled, as tokio's task-locals are):
//!
//! - on the server, [`ScopeLayer`] (innermost, just above the handler) runs the handler inside a
//!   scope holding the request's [`RequestContext`];
//! - on the client, every [`TimeoutLayer`](crate::timeout::TimeoutLayer) (and
//!   [`send_deadline`](crate::timeout::headers::send_deadline)) reads the scope's deadline when
//!   the request carries none, so the outermost client timeout takes it and each layer further
//!   down still takes its fraction of what is left; a timeout hands its own deadline down the
//!   same way, in a nested scope, when the request has no slot for it, so code below a timeout
//!   reads the deadline with [`effective_deadline`] (the request's, else the scope's);
//! - a task the handler spawns gets the scope through [`spawn`] (or [`in_current_scope`] for
//!   any other executor); `tokio::spawn` alone starts a task outside any scope, on purpose: a
//!   background job should not die with the request that started it.
//!
//! # Precedence
//! A layer that needs a deadline takes, in this order: the deadline the request carries
//! explicitly, then the scope's, then its own default (a [`TimeoutLayer`]'s timeout still caps
//! the result). Scopes nest: an inner scope never extends its outer one (the earliest deadline
//! wins), so a handler cannot give its calls more time than its caller gave it. Outside any
//! scope nothing changes. A scope whose deadline has already passed makes every outgoing call
//! through a timeout layer fail at once with [`Elapsed`](crate::timeout::Elapsed), without
//! sending anything.
//!
//! [`TimeoutLayer`]: crate::timeout::TimeoutLayer
//!
//! # Criticality
//! The scope carries the request's [`Criticality`] too (Google's four levels, `Sheddable` to
//! `CriticalPlus`), so a handler's calls are shed at the level of the request they serve. It
//! travels the same three ways as the deadline: in the request's extensions
//! ([`HasCriticality`]), on the wire in the `backstop-criticality` header (also the gRPC
//! metadata key on HTTP/2: [`send_criticality`] writes it, [`inherit_criticality`] reads it;
//! [`send_context`] and [`inherit_context`] do deadline and criticality in one step), and in
//! the scope. The precedence is the deadline's: the request's own tag, then the scope's, then
//! the layer's default ([`ByCriticality::new`]). In nested scopes the inner tag wins (a handler
//! may send its prefetches as `Sheddable`). They are siblings of `send_deadline` and
//! `inherit_deadline` rather than extensions of them, so a service can propagate one without
//! the other, and the timeout module stays free of a concept it does not use.
//!
//! The layers that refuse read it through [`CriticalityOf`]: [`SameCriticality`] (the
//! default: all alike) or [`ByCriticality`]; the [`pid`](crate::pid) admission then refuses
//! the lowest level first.
//!
//! # Example
//! ```
//! use backstop::context::{self, ScopeLayer};
//! use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! // The next service down: reports the deadline it was given (the request's, else the
//! // scope's: the timeout hands it down in a scope rather than allocate an extension).
//! let downstream = tower::service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, backstop::BoxError>(context::effective_deadline(&req).map(|d| d.remaining()))
//! });
//! // A client stack with a 5 s timeout that gives the layers below 90% of what is left.
//! let client = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))?)
//!     .service(downstream);
//!
//! // The server: its handler calls the client with no deadline code of its own.
//! let mut server = ServiceBuilder::new()
//!     .layer(ScopeLayer::new())
//!     .service_fn(move |_req: http::Request<()>| {
//!         let client = client.clone();
//!         async move { client.oneshot(http::Request::new(())).await }
//!     });
//!
//! // A request that arrives with 1 s left.
//! let mut req = http::Request::new(());
//! req.set_deadline(Deadline::after(Duration::from_secs(1)));
//! let seen = server.ready().await?.call(req).await?;
//! assert_eq!(seen, Some(Duration::from_millis(900)));
//!
//! // Outside any scope the client's own timeout applies.
//! assert!(context::current().deadline().is_none());
//! # Ok(())
//! # }
//! ```

mod criticality;
mod future;
mod layer;
mod scope;
mod service;

pub use self::criticality::{
    ByCriticality, Criticality, CriticalityOf, HasCriticality, SameCriticality, UnknownCriticality,
};
#[cfg(feature = "http")]
pub use self::criticality::{
    CRITICALITY_HEADER, inherit_criticality, read_criticality, send_criticality, write_criticality,
};
pub use self::future::ScopedFuture;
pub use self::layer::ScopeLayer;
pub use self::scope::{
    RequestContext, current, current_criticality, current_deadline, effective_deadline,
    in_current_scope, spawn,
};
pub use self::service::Scope;

/// For servers: [`inherit_deadline`](crate::timeout::headers::inherit_deadline) and
/// [`inherit_criticality`] in one step, for `tower::util::MapRequestLayer`.
#[cfg(feature = "http")]
pub fn inherit_context<B>(req: http::Request<B>) -> http::Request<B> {
    inherit_criticality(crate::timeout::headers::inherit_deadline(req))
}

/// For clients: [`send_deadline`](crate::timeout::headers::send_deadline) and
/// [`send_criticality`] in one step, for `tower::util::MapRequestLayer`.
#[cfg(feature = "http")]
pub fn send_context<B>(req: http::Request<B>) -> http::Request<B> {
    send_criticality(crate::timeout::headers::send_deadline(req))
}
