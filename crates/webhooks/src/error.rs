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
    /// No such replay of this webhook.
    #[error("replay not found")]
    ReplayNotFound,
    /// The delivery is not in the failed state.
    #[error("delivery is not failed")]
    DeliveryNotFailed,
    /// The named tenant does not exist or is not visible.
    #[error("tenant not found")]
    TenantNotFound,
    /// The webhook changed since it was read (a store's version check failed); the
    /// service re-reads and retries, or answers `PreconditionFailed` to an `If-Match`.
    #[error("the webhook changed concurrently")]
    Stale,
    /// `If-Match` named a version that is no longer current; nothing changed.
    #[error("the webhook has changed since version {0} was read")]
    PreconditionFailed(String),
    /// A state conflict (e.g. too many concurrent changes to one webhook).
    #[error("{0}")]
    Conflict(String),
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

impl From<stratum_core::WriteRefused> for WebhookError {
    fn from(e: stratum_core::WriteRefused) -> Self {
        match e {
            stratum_core::WriteRefused::PreconditionFailed(m) => Self::PreconditionFailed(m),
            stratum_core::WriteRefused::TooContended => {
                Self::Conflict("too many concurrent changes to this webhook; retry".into())
            }
        }
    }
}

impl From<stratum_core::Forbidden> for WebhookError {
    fn from(e: stratum_core::Forbidden) -> Self {
        Self::Forbidden(e.0)
    }
}
