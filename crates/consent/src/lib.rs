//! Stratum consent: who agreed to what, for which purpose, until when. One record per
//! (tenant, subject, purpose); granting again re-activates it, revoking ends it. Every
//! grant and revoke is journaled in the same transaction as the change (no webhook event:
//! consent is not one of the delivered events).

#![warn(missing_docs)]

pub mod error;
pub mod model;
pub mod ports;
pub mod service;

pub use error::ConsentError;
pub use model::*;
pub use ports::*;
pub use service::*;
