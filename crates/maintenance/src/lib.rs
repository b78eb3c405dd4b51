//! Stratum maintenance: the retention purge, the atomic rotation of the encryption key at
//! rest, and the start-up check that the configured key can read the stored data. The
//! rules live here; the Postgres adapter owns the transactions.

#![warn(missing_docs)]

pub mod error;
pub mod model;
pub mod ports;
pub mod service;
#[cfg(test)]
mod service_tests;

pub use error::MaintenanceError;
pub use model::*;
pub use ports::*;
pub use service::*;
