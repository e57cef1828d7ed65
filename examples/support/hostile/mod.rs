//! The parts of `examples/hostile_clients.rs`, one file per breach.

pub mod alloc;
pub mod config;
pub mod hedge;
pub mod retry;
pub mod throttle;
