//! Consent errors.

use stratum_core::StoreError;
use thiserror::Error;

/// Why a consent operation failed.
#[derive(Debug, Error)]
pub enum ConsentError {
    /// Bad input; `field` names what.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such tenant, archived, or not visible to the caller.
    #[error("tenant not found")]
    TenantNotFound,
    /// No active grant for this (tenant, subject, purpose).
    #[error("consent not found")]
    NotFound,
    /// The record changed concurrently (another grant created it first, or another change
    /// committed since it was read); retrying is safe.
    #[error("{0}")]
    Conflict(String),
    /// The caller lacks the scope the operation needs.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<stratum_core::Forbidden> for ConsentError {
    fn from(e: stratum_core::Forbidden) -> Self {
        Self::Forbidden(e.0)
    }
}

impl ConsentError {
    /// A validation error about `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }
}
