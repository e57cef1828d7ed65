//! A deterministic load model: crush-test a stack before production.
//!
//! "Test to failure and beyond; after the overload, see how quickly latency recovers." This
//! module drives a tower stack far past its capacity in simulated time and measures what users
//! would have seen: offered load, goodput (answers delivered before the caller gave up),
//! latency percentiles, attempts per request, work wasted on callers that had already left, and
//! how long the system takes to recover after a surge.
//!
//! # The model
//! - **Time** is tokio's paused clock: [`Scenario::run`] builds a fresh current-thread runtime
//!   with `start_paused(true)`, so a 100 s scenario takes as long as its events take to
//!   compute, and nothing depends on the wall clock. tokio's timer counts whole milliseconds, so
//!   simulated durations are rounded up to the millisecond.
//! - **Randomness** comes from one seed ([`ScenarioBuilder::seed`]): the same seed gives the
//!   same report, to the last digit.
//! - **Load** is open-loop: new logical requests arrive by a [`LoadProfile`] of steps and
//!   ramps, evenly spaced or as a Poisson process ([`Arrivals`]), each from one of many clients.
//! - **Users** ([`ClientBehavior`]) give up after their `patience` (which is also the
//!   request's [`Deadline`](crate::timeout::Deadline)), may reload ([`Reload`]), and make a
//!   chain of dependent calls ([`Chain`]), each with an attempt timeout and a retry loop
//!   ([`CallPolicy`], [`RetryPolicy`]), or leave retrying to their client stack.
//! - **Servers** ([`SimServer`]) have `c` workers behind an unbounded FIFO queue and a
//!   [`ServiceTime`] distribution. Each sits behind its own server stack; the network between
//!   a caller and a server is a spawned task, so a caller that gives up does not stop the
//!   server's work, as with a real connection. Work finished after its caller left is counted as
//!   wasted.
//! - **Topologies** are chains of [`Hop`]s (client → A → B → storage): each hop's server calls
//!   the next through a client stack, holding its worker while it waits, and every hop counts
//!   the requests that reach it, so retry amplification shows.
//! - **Stacks plug in** as closures returning a [`SimService`] (a `BoxCloneService`): the
//!   server stack around each [`SimServer`], and the client stack each client id wraps around
//!   the way to the front hop. Any tower layer whose request bound [`SimRequest`] meets (it is
//!   `Clone`, carries a deadline, and has `http::Extensions` for markers) fits.
//!
//! A [`SimReport`] holds a 1 s time series ([`Bucket`]), per-hop counts with a Little's-law
//! check ([`HopReport`]), and a [`Summary`] whose recovery time follows [`RecoveryRule`];
//! [`table`] prints several runs side by side. [`WebApp`] is the congestion-collapse story of the
//! demo, ready to run against any stack.
//!
//! # When to use it
//! Before you ship a client or server stack: drive it at twice its capacity, check that goodput
//! stays near capacity during the surge and that latency recovers within seconds once the load
//! falls. Use it in tests: the runs are deterministic and take milliseconds.
//!
//! # Example: crush-test your own server stack
//! ```
//! use backstop::sim::{ClientBehavior, Hop, LoadProfile, Scenario, ServiceTime, SimService};
//! use backstop::timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), backstop::BoxError> {
//! let s = Duration::from_secs;
//! // 4 workers × 50 ms = 80 requests per second; offer 40, then 160 for 5 s, then 40.
//! let profile = LoadProfile::new().step(s(5), 40.0).step(s(5), 160.0).step(s(10), 40.0);
//! let web = Hop::new("web", 4, ServiceTime::Fixed(Duration::from_millis(50)))
//!     // Your server stack: here, only a timeout that inherits the caller's deadline.
//!     .stack(|server| {
//!         let deadline = TimeoutLayer::new(Duration::from_secs(5)).expect("valid");
//!         SimService::new(ServiceBuilder::new().layer(deadline).service(server))
//!     });
//! let report = Scenario::builder("my stack")
//!     .seed(7)
//!     .profile(profile)
//!     .clients(ClientBehavior { patience: Duration::from_millis(500), ..Default::default() })
//!     .hop(web)
//!     .build()?
//!     .run();
//!
//! println!("{report}"); // the summary table; report.series_table() for each second
//! assert_eq!(report.capacity_rps, 80.0);
//! assert!(report.summary.offered > 0);
//! assert!(report.summary.recovery.recovered());
//! # Ok(())
//! # }
//! ```
mod client;
mod profile;
mod recorder;
mod report;
mod request;
mod scenario;
mod server;
mod service_time;
mod story;

pub use self::client::{CallPolicy, Chain, ClientBehavior, Reload, RetryPolicy};
pub use self::profile::{Arrivals, LoadProfile, Segment};
pub use self::report::{Bucket, HopReport, Recovery, RecoveryRule, SimReport, Summary, table};
pub use self::request::{SimRequest, SimResponse, SimService};
pub use self::scenario::{ClientStackFn, Hop, Scenario, ScenarioBuilder, ServerStackFn};
pub use self::server::SimServer;
pub use self::service_time::ServiceTime;
pub use self::story::WebApp;
