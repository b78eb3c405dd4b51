//! The one error type of the crate.

/// Why a cryptographic operation refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The master key is too short to be trusted as key material.
    #[error("STRATUM_ENCRYPTION_KEY must be at least {min} bytes long (got {got})")]
    KeyTooShort {
        /// The minimum length in bytes.
        min: usize,
        /// The length that was supplied.
        got: usize,
    },
    /// The value is not a stored envelope: unknown version, bad layout or bad base64.
    #[error(
        "value is not a valid encrypted envelope (unknown version, bad layout or bad encoding)"
    )]
    Malformed,
    /// The value was encrypted under a key this process does not hold.
    #[error(
        "value was encrypted with key id {found}, but the configured STRATUM_ENCRYPTION_KEY has key id {expected}; \
         start with the key that encrypted the stored data, or rotate it"
    )]
    KeyMismatch {
        /// The key id this process expected (its current key).
        expected: String,
        /// The key id recorded in the value.
        found: String,
    },
    /// Authentication of the ciphertext failed: the value was altered or corrupted.
    #[error("decryption failed: the value was altered or corrupted")]
    Decrypt,
    /// The cryptographic backend refused to encrypt or derive (only for absurd input sizes).
    #[error("encryption failed")]
    Encrypt,
    /// A `whsec_` secret whose remainder is not non-empty base64.
    #[error("invalid webhook secret: the part after whsec_ must be non-empty base64")]
    InvalidSecret,
    /// No signature in the header matches the payload.
    #[error("webhook signature does not match")]
    SignatureMismatch,
    /// The timestamp header is unparseable or too far from the current time.
    #[error("webhook timestamp is missing, unparseable or outside the tolerance window")]
    TimestampOutOfTolerance,
    /// The signature header holds no signature of a supported scheme.
    #[error("webhook signature header holds no supported signature")]
    MissingSignature,
}
