use tower_layer::Layer;

use super::ReadTrailers;
use crate::error::ConfigError;

/// The default limit: what Linkerd keeps of a body to replay it.
const DEFAULT_LIMIT: usize = 64 * 1024;

/// Reads the status of unary gRPC answers from their trailers before the layers above see
/// them; see the [module docs](super).
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
