//! Client-side adaptive throttling: a client that stops asking when the server keeps refusing.
//!
//! A server that refuses a request still pays for it: it parsed it, looked it up, and wrote the
//! 429. When clients offer ten times what it accepts, it can spend most of its time refusing.
//! The SRE book's answer ("Handling Overload", also Envoy's admission control filter) is for
//! each client to count, over a window (2 minutes there), the `requests` it tried and the
//! `accepts` the server gave, and to refuse a new request locally, before sending it, with
//! probability
//!
//! ```text
//! max(0, (requests − K · accepts) / (requests + 1))
//! ```
//!
//! Local refusals count as requests, so the share refused grows with the offered load: whatever
//! the client offers, the server sees about K times what it accepts (K = 2: one refusal per
//! accept). The client needs no rate configuration, and while the server accepts everything
//! (`requests ≤ K · accepts`) it refuses nothing. K above 1 keeps some requests going to a
//! server that refuses, so the client learns when it recovers.
//!
//! [`ClientThrottleLayer`] counts a request when it is called, and an accept when the answer is
//! anything but an [`Outcome::Overload`](crate::classify::Outcome::Overload) (by its
//! [`Classify`](crate::classify::Classify): 429, a 503 with `Retry-After`, a backstop refusal
//! from a layer below); a caller that stops waiting counts as an accept (it learned nothing
//! about the server's load). The local refusal is
//! [`Overloaded`](crate::Overloaded)`{ reason: ClientThrottled }`, which no backstop retry
//! repeats. [`ClientThrottle`] is the shared, lock-free state: twelve slots of atomic counters
//! that age out one at a time. Series: `backstop_client_throttle_refused_total` and
//! `backstop_client_throttle_probability`.
//!
//! # When to use it, and when the adaptive token bucket fits better
//! Both sit on the client, read the same outcomes, and need no rate configured.
//!
//! - The [adaptive token bucket](crate::token_bucket) (the AWS SDKs' adaptive mode) learns a
//!   *rate*: it cuts to 0.7 × the send rate at each congestion event and climbs back along a
//!   CUBIC curve. Its sends settle near what the server accepts, so the server sees few
//!   refusals (ratio near 1), and it can make a request wait for a token instead of failing.
//!   It fits one client whose traffic to one server is steady, where a rate is meaningful.
//! - The client throttle learns a *ratio*: the server sees about K times what it accepts,
//!   by design spending some of its work on refusals (ratio near K) to keep learning at once
//!   when capacity returns. It holds no rate, so it fits many clients sharing a server, bursty
//!   traffic, and mixed request costs, and it never queues. It reacts over its window (a
//!   recovered server is used fully again within about one window).
//!
//! The `criticality` example measures both against a server offered 10× what it accepts.
//!
//! Where it goes: on a client, below the retry layer (a retry is a request too) and above the
//! per-attempt timeout, where a token bucket would go.
//!
//! # Example
//! ```
//! use backstop::client_throttle::{ClientThrottle, ClientThrottleLayer};
//! use backstop::{BoxError, OverloadReason, Overloaded, find_overload};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let throttle = ClientThrottle::builder("backend")
//!     .k(2.0)
//!     .window(Duration::from_secs(120))
//!     .seed(7)
//!     .build()?;
//! // A server that refuses everything.
//! let mut client = ServiceBuilder::new()
//!     .layer(ClientThrottleLayer::new(throttle.clone()))
//!     .service_fn(|_req: ()| async {
//!         Err::<(), BoxError>(Overloaded::new(OverloadReason::Throttled).into())
//!     });
//! let mut local = 0;
//! for _ in 0..1000 {
//!     let err = client.ready().await?.call(()).await.unwrap_err();
//!     if find_overload(err.as_ref()).unwrap().reason() == OverloadReason::ClientThrottled {
//!         local += 1;
//!     }
//! }
//! // With no accepts, the refusal probability climbs to n / (n + 1): most never leave.
//! assert!(local > 950, "{local}");
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod service;
mod throttle;

pub use self::future::ResponseFuture;
pub use self::layer::ClientThrottleLayer;
pub use self::service::ClientThrottleService;
pub use self::throttle::{ClientThrottle, ClientThrottleBuilder};
