use super::GrpcAnswer;
use crate::http::error_to_response::ErrorAnswer;

/// A service whose errors become trailers-only gRPC answers; made by
/// [`ErrorToGrpcLayer`](super::ErrorToGrpcLayer), see the [module docs](super). `H` is the
/// [`OnGrpcError`](super::OnGrpcError) hook.
///
/// Its error type is `Infallible`: every request gets exactly one answer. An error from the
/// inner service's `poll_ready` is kept and answers the next call, so readiness never fails.
/// It is the HTTP edge's [`ErrorAnswer`] with the gRPC [`GrpcAnswer`].
pub type ErrorToGrpc<S, H = ()> = ErrorAnswer<S, GrpcAnswer<H>>;
