//! Stratum tenancy: the tenant tree, inherited config, permission policies and API keys —
//! the sources of the events webhooks deliver. Services validate, check visibility and
//! build the [`Journal`](stratum_core::Journal) each mutation commits with; the ports'
//! adapters make it atomic.

#![warn(missing_docs)]

pub mod directory;
pub mod error;
pub mod events;
pub mod model;
pub mod ports;
pub mod service;
#[cfg(test)]
mod service_tests;

pub use directory::StoreDirectory;
pub use error::TenancyError;
pub use model::*;
pub use ports::*;
pub use service::*;
