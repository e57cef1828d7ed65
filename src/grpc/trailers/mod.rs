//! Unary gRPC answers whose status comes in the trailers, read before the layers above see the
//! response.
//!
//! A gRPC server that sends a message and then its status (every successful unary call, and a
//! failure after a message) puts `grpc-status` in the trailers, after the body. A layer that
//! classifies when the response future completes (retry, hedge, the Little's-law meter, the
//! adaptive token bucket) would see a 200 with no status, and count it a success.
//!
//! [`ReadTrailersLayer`], lowest in a client stack (just above the channel), waits for the end
//! of such an answer, up to a size limit (64 KiB by default), and puts the trailers' status in
//! the response's extensions as a [`TrailersStatus`](super::TrailersStatus), which the
//! default classifier and [`GrpcClassifier`](super::GrpcClassifier) read as if it had come in
//! the headers. The body is handed on unchanged, frames and trailers, so tonic decodes the same
//! message and status.
//!
//! It costs a unary call no latency: tonic's unary client waits for the trailers before it
//! returns anyway. It is wrong for streaming calls (a stream's first message would wait for its
//! end): put the layer only on channels that serve unary methods, or give it a small limit, past
//! which the answer streams on unread (the status then stays unknown to the layers above).
//!
//! Bad input: an answer that already has a `grpc-status` in its headers (trailers-only) or is
//! not gRPC is passed on at once; a body that ends without trailers, or with trailers holding no
//! `grpc-status`, gets `UNKNOWN` (final), which is what gRPC clients make of a missing status;
//! a body error while reading is the call's error (retryable, as a transport error); trailers
//! that never come hold the call as tonic would, until a timeout above it ends it.

mod body;
mod future;
mod layer;
mod service;

pub use self::body::TrailersBody;
pub use self::future::ResponseFuture;
pub use self::layer::ReadTrailersLayer;
pub use self::service::ReadTrailers;
