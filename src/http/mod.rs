//! How the primitives meet HTTP (feature `http`).

pub mod replay;

pub use self::replay::{ReplayBody, ReplayBodyLayer};
