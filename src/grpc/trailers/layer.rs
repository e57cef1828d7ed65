use tower_layer::Layer;

use super::ReadTrailers;
use crate::error::ConfigError;

/// The default limit: what Linkerd keeps of a body to replay it.
const DEFAULT_LIMIT: usize = 64 * 1024;

/// Reads the status of unary gRPC answers from their trailers before the layers above see
/// them; see the [module docs](super).
///
/// ```
/// use backstop::classify::{Classify, DefaultClassifier, Outcome};
/// use backstop::grpc::ReadTrailersLayer;
/// use bytes::Bytes;
/// use http_body::Frame;
/// use http_body_util::StreamBody;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), backstop::BoxError> {
/// // A unary answer whose status (UNAVAILABLE) comes only in the trailers.
/// let svc = ServiceBuilder::new()
///     .layer(ReadTrailersLayer::new())
///     .service_fn(|_req: http::Request<()>| async {
///         let mut trailers = http::HeaderMap::new();
///         trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
///         let frames = vec![
///             Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
///             Ok(Frame::trailers(trailers)),
///         ];
///         let body = StreamBody::new(futures::stream::iter(frames));
///         Ok::<_, backstop::BoxError>(
///             http::Response::builder().header("content-type", "application/grpc").body(body)?,
///         )
///     });
/// let res = svc.oneshot(http::Request::new(())).await?;
/// // Every layer above reads the status before the body is handed on.
/// assert_eq!(DefaultClassifier.classify(Ok::<_, &backstop::BoxError>(&res)), Outcome::Retryable);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ReadTrailersLayer {
    limit: usize,
}

impl ReadTrailersLayer {
    /// Waits for the trailers of answers up to 64 KiB.
    pub fn new() -> Self {
        ReadTrailersLayer {
            limit: DEFAULT_LIMIT,
        }
    }

    /// Waits for the trailers of answers up to `bytes` of messages, in [1, 16 MiB]; a longer
    /// answer streams on with its status unread.
    pub fn with_limit(bytes: usize) -> Result<Self, ConfigError> {
        let limit = crate::error::check(
            "limit",
            bytes,
            |b| (1..=16 * 1024 * 1024).contains(b),
            "in [1, 16777216] bytes",
        )?;
        Ok(ReadTrailersLayer { limit })
    }
}

impl Default for ReadTrailersLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ReadTrailersLayer {
    type Service = ReadTrailers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadTrailers::new(inner, self.limit)
    }
}
