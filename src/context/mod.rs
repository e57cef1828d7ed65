//! One request context that follows a request through its handler to the calls it makes.
//!
//! A server learns its caller's deadline from the request (`grpc-timeout`, read by
//! [`inherit_deadline`](crate::timeout::headers::inherit_deadline)), but the handler's own
//! outgoing calls are separate requests: unless someone copies the deadline by hand, the next
//! service down starts from nothing and keeps working after the first caller has left. Finagle
//! and gRPC-Go pass the deadline on through a context object; this module does the same for
//! tower stacks with a tokio task-local:
//!
//! - on the server, [`ScopeLayer`] (innermost, just above the handler) runs the handler inside a
//!   scope holding the request's [`RequestContext`];
//! - on the client, every [`TimeoutLayer`](crate::timeout::TimeoutLayer) (and
//!   [`send_deadline`](crate::timeout::headers::send_deadline)) reads the scope's deadline when
//!   the request carries none, so the outermost client timeout takes it and each layer further
//!   down still takes its fraction of what is left;
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
//! # Example
//! ```
//! use backstop::context::{self, ScopeLayer};
//! use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), backstop::BoxError> {
//! // The next service down: reports the deadline its request arrived with.
//! let downstream = tower::service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, backstop::BoxError>(req.deadline().map(|d| d.remaining()))
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

mod future;
mod layer;
mod scope;
mod service;

pub use self::future::ScopedFuture;
pub use self::layer::ScopeLayer;
pub use self::scope::{RequestContext, current, current_deadline, in_current_scope, spawn};
pub use self::service::Scope;
