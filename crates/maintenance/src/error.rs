//! Maintenance errors.

use stratum_core::StoreError;
use thiserror::Error;

/// Why a maintenance operation failed.
#[derive(Debug, Error)]
pub enum MaintenanceError {
    /// Bad input; `field` names what.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The caller is not a global admin.
    #[error("{0}")]
    Forbidden(String),
    /// `old_key` is not the key the stored data and this process use; nothing changed.
    #[error("old_key is not the encryption key in use")]
    InvalidOldKey,
    /// Another rotation is running; nothing changed.
    #[error("another key rotation is in progress")]
    RotationInProgress,
    /// A stored value could not be re-encrypted (corrupt, or under an unknown key); the
    /// rotation rolled back and nothing changed. `row` names the value, never its content.
    #[error("{row} could not be re-encrypted: {reason}")]
    Reencrypt {
        /// Which stored value, e.g. `webhook <id>` or `config entry <tenant>/<key>`.
        row: String,
        /// Why (a crypto error: never key material or plaintext).
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MaintenanceError {
    /// A validation error about `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }
}

impl From<stratum_core::Forbidden> for MaintenanceError {
    fn from(e: stratum_core::Forbidden) -> Self {
        Self::Forbidden(e.0)
    }
}
