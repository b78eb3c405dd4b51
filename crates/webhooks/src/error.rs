//! Webhook errors.

use stratum_core::StoreError;
use thiserror::Error;

/// Why a webhook operation failed.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// Bad input; `field` names what.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The URL is not acceptable as a target (scheme, credentials, blocked address).
    #[error("invalid webhook url: {0}")]
    UrlInvalid(String),
    /// No such webhook, or not visible to the caller.
    #[error("webhook not found")]
    NotFound,
    /// No such delivery, or not visible to the caller.
    #[error("delivery not found")]
    DeliveryNotFound,
    /// The delivery is not in the failed state.
    #[error("delivery is not failed")]
    DeliveryNotFailed,
    /// The named tenant does not exist or is not visible.
    #[error("tenant not found")]
    TenantNotFound,
    /// The tenant (or the global set) already has the most webhooks allowed.
    #[error("{0}")]
    LimitReached(String),
    /// Only a global key may do this.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
