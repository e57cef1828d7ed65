use super::GrpcAnswer;
use crate::http::error_to_response::AnswerFuture;

/// The response future of [`ErrorToGrpc`](super::ErrorToGrpc): the inner future, whose error
/// becomes a trailers-only answer. `H` is the [`OnGrpcError`](super::OnGrpcError) hook.
/// Dropping it drops the inner future and every permit it holds.
pub type ResponseFuture<F, H = ()> = AnswerFuture<F, GrpcAnswer<H>>;
