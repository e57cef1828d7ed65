//! How the primitives meet gRPC (feature `grpc`): what a gRPC answer means to the layers, what a
//! server stack answers, and gRPC's own retry throttling.
//!
//! A gRPC call is an HTTP/2 exchange whose HTTP status is 200 even when it fails: the outcome
//! is the `grpc-status` code, sent in the response headers when the server answers with no
//! message ("trailers-only": every refusal, and every error a tonic handler returns), or in the
//! trailers after the messages. A server that wants less load says so with
//! `RESOURCE_EXHAUSTED` and with `grpc-retry-pushback-ms` (gRPC's A6 retry design: a
//! non-negative number of milliseconds before a retry; a negative or malformed one means "do
//! not retry").
//!
//! - [`GrpcClassifier`]: `OK` success, `RESOURCE_EXHAUSTED` overload (never retried; feeds the
//!   adaptive token bucket and the hedge's stand-down), `UNAVAILABLE` retryable after its
//!   pushback, `DEADLINE_EXCEEDED`, `CANCELLED` and the rest final, a "do not retry" pushback an
//!   overload. With the `grpc` feature the default classifier of every layer applies it to
//!   gRPC answers, so a tonic client stack needs no classifier call.
//! - Pushback: the retry layer waits at least the pushback before its retry, inside the budget
//!   and the deadline ([`Classify::pushback`](crate::classify::Classify::pushback)); the
//!   adaptive token bucket counts an answer with a pushback as a throttle.
//! - [`ErrorToGrpcLayer`] ([`refusal`]): the server stack's errors as gRPC answers
//!   (`RESOURCE_EXHAUSTED` for a client over its share, `UNAVAILABLE` for a full server, both
//!   with a pushback; `DEADLINE_EXCEEDED` for a passed deadline).
//! - [`ClientRefusalLayer`] ([`client_refusal`]): on a tonic client, the calls the client's own
//!   layers refuse or time out reach the caller as `RESOURCE_EXHAUSTED`, `UNAVAILABLE` (with the
//!   pushback) or `DEADLINE_EXCEEDED`, as a server's would, not as `UNKNOWN`.
//! - [`ReadTrailersLayer`] ([`trailers`]): unary answers whose status is in the trailers, read
//!   before the layers above classify them.
//! - [`RetryThrottling`](crate::retry::RetryThrottling): A6's retry throttling as a retry
//!   [`Budget`](crate::retry::Budget).
//!
//! Deadlines travel in `grpc-timeout`: [`timeout::headers`](crate::timeout::headers) writes it
//! on a client (`send_deadline`) and reads it on a server (`inherit_deadline`).
//!
//! # What each layer sees when the status comes in the trailers
//! The layers classify a call when its response future completes, at the response headers.
//! A status in the headers is seen by all of them. A status that comes only in the trailers is
//! seen by none of them, unless a [`ReadTrailersLayer`] below them has read it first:
//!
//! | layer | status in the headers | status in the trailers, no `ReadTrailersLayer` | with `ReadTrailersLayer` below (unary) |
//! |---|---|---|---|
//! | retry | retries `UNAVAILABLE` | counts a success, no retry (as A6: a call whose headers came is committed) | retries it |
//! | hedge | stands down on `RESOURCE_EXHAUSTED` | counts a success | sees it |
//! | adaptive token bucket | throttle on `RESOURCE_EXHAUSTED` or a pushback | counts a success | sees it |
//! | Little's-law meter | counts the outcome | counts a success | sees it |
//!
//! The choice for the retry decision: wait for the trailers of unary calls only, in
//! [`ReadTrailersLayer`], because tonic's unary client waits for them before it returns anyway
//! (no latency is added), and never for streams, whose first message must not wait for their
//! end (A6 does not retry a call whose response headers came, either).
//!
//! # Bad input
//! | input | outcome |
//! |---|---|
//! | `grpc-status` not a number | `UNKNOWN`: final |
//! | a gRPC 200 with no `grpc-status` in the headers | success at the headers (the status is still to come) |
//! | a body that ends with no `grpc-status` (read by [`ReadTrailersLayer`]) | `UNKNOWN`: final |
//! | a non-200 without `grpc-status` (a proxy's answer) | HTTP's mapping (429 overload, 5xx retryable) |
//! | negative or malformed `grpc-retry-pushback-ms` | "do not retry": an overload |
//! | a huge pushback (up to `u64::MAX` ms) | past the deadline, or past a century: no retry |
//! | trailers that never come | the call waits, as tonic would, until a timeout above ends it |

pub(crate) mod classify;
pub mod client_refusal;
pub mod refusal;
mod status;
pub mod trailers;

pub use self::classify::{GrpcClassifier, TrailersStatus};
pub use self::client_refusal::{ClientRefusal, ClientRefusalLayer};
pub use self::refusal::{ErrorToGrpc, ErrorToGrpcLayer, OnGrpcError, error_code, error_to_grpc};
pub use self::status::{
    Code, GRPC_MESSAGE_HEADER, GRPC_PUSHBACK_HEADER, GRPC_STATUS_HEADER, GrpcStatus, Pushback,
    is_grpc,
};
pub use self::trailers::{ReadTrailers, ReadTrailersLayer, TrailersBody};
