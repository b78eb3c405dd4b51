//! The error every storage port shares for infrastructure failures.

use thiserror::Error;

/// Why a storage port could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The storage is unreachable (pool timeout, connection refused); nothing changed.
    #[error("storage unavailable")]
    Unavailable,
    /// A ciphertext to be written names a key that is not the database's active encryption
    /// key (a rotation committed meanwhile); nothing changed. Re-encrypt under
    /// `active_key_id` and try again, or, without that key, answer `KeyUnavailable`.
    #[error("the value was encrypted under a key that is no longer the active encryption key (active: {active_key_id})")]
    KeyNotActive {
        /// The database's active key id.
        active_key_id: String,
    },
    /// A stored secret (or the database's active key) is under a key this process does not
    /// hold; nothing changed. Another process rotated: restart this one with that key.
    #[error("encryption key {key_id} is not held by this process")]
    KeyUnavailable {
        /// The key id this process would need.
        key_id: String,
    },
    /// Anything else: a bug or an unexpected state; the source is kept for the logs.
    #[error("storage error: {0}")]
    Internal(String),
}

/// How often a writer seals a secret again after `KeyNotActive` (each time a rotation
/// committed meanwhile) before it gives up.
pub const KEY_RETRIES: u32 = 3;
