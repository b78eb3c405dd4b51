//! The error every storage port shares for infrastructure failures.

use thiserror::Error;

/// Why a storage port could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The storage is unreachable (pool timeout, connection refused); nothing changed.
    #[error("storage unavailable")]
    Unavailable,
    /// Anything else: a bug or an unexpected state; the source is kept for the logs.
    #[error("storage error: {0}")]
    Internal(String),
}
