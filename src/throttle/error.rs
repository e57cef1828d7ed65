//! The refusal of a request that carries no client identity.

use std::fmt;

/// A throttle configured with [`MissingKey::Refuse`](super::MissingKey::Refuse) refused a
/// request whose [`ClientKey`](super::ClientKey) found no client. It is not an overload: the
/// request is malformed for this server (an HTTP server answers 400 or 401), so retrying it
/// cannot help either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MissingClientKey;

impl fmt::Display for MissingClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request carries no client key")
    }
}

impl std::error::Error for MissingClientKey {}
