//! Tenancy errors.

use stratum_core::StoreError;
use thiserror::Error;

/// Why a tenancy operation failed.
#[derive(Debug, Error)]
pub enum TenancyError {
    /// Bad input; `field` names what.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such tenant, or not visible to the caller.
    #[error("tenant not found")]
    TenantNotFound,
    /// No such config key on this tenant.
    #[error("config key not found")]
    ConfigNotFound,
    /// No such permission policy.
    #[error("permission policy not found")]
    PermissionNotFound,
    /// No such API key.
    #[error("api key not found")]
    ApiKeyNotFound,
    /// A unique value is taken (slug, permission key).
    #[error("{0}")]
    Conflict(String),
    /// The tenant still has active children.
    #[error("tenant has active children")]
    HasChildren,
    /// The move would put a tenant under itself.
    #[error("a tenant cannot move under itself or one of its descendants")]
    CycleDetected,
    /// An ancestor locked this config key.
    #[error("config key '{0}' is locked by an ancestor")]
    ConfigLocked(String),
    /// The resource changed since it was read (a store's version check failed); the
    /// services re-read and retry, or answer `PreconditionFailed` to an `If-Match`.
    #[error("the resource changed concurrently")]
    Stale,
    /// `If-Match` named a version that is no longer current; nothing changed.
    #[error("the resource has changed since version {0} was read")]
    PreconditionFailed(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A stored sensitive value cannot be decrypted with this process's key.
    #[error("stored secret cannot be decrypted: {0}")]
    Crypto(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<stratum_core::WriteRefused> for TenancyError {
    fn from(e: stratum_core::WriteRefused) -> Self {
        match e {
            stratum_core::WriteRefused::PreconditionFailed(m) => Self::PreconditionFailed(m),
            stratum_core::WriteRefused::TooContended => {
                Self::Conflict("too many concurrent changes to this resource; retry".into())
            }
        }
    }
}

impl TenancyError {
    /// A validation error about `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }
}

impl From<stratum_core::Forbidden> for TenancyError {
    fn from(e: stratum_core::Forbidden) -> Self {
        Self::Forbidden(e.0)
    }
}
