//! The `stratum` binary's library half: configuration and the composition root, shared
//! with the in-process API tests.

pub mod background;
pub mod config;
pub mod idempotency;
pub mod ops;
pub mod telemetry;
pub mod wiring;
