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
    /// Anything else: a bug or an unexpected state. The cause is kept as the error's
    /// [`source`](std::error::Error::source), for the logs and for callers that inspect it.
    #[error("storage error: {0}")]
    Internal(#[source] BoxError),
}

/// Any error, boxed: the cause an [`StoreError::Internal`] keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// An internal failure caused by `cause` (an error, or a message: `&str` and `String`
    /// convert).
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Self::Internal(cause.into())
    }
}

/// How often a writer seals a secret again after `KeyNotActive` (each time a rotation
/// committed meanwhile) before it gives up.
pub const KEY_RETRIES: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, Error)]
    #[error("disk on fire")]
    struct Cause;

    #[test]
    fn an_internal_error_keeps_its_cause_as_source() {
        let e = StoreError::internal(Cause);
        assert_eq!(e.to_string(), "storage error: disk on fire");
        let source = e.source().expect("the cause is the source");
        assert!(source.downcast_ref::<Cause>().is_some());
        let m = StoreError::internal("bad row");
        assert_eq!(m.to_string(), "storage error: bad row");
        assert_eq!(
            m.source().map(ToString::to_string).as_deref(),
            Some("bad row")
        );
    }
}
