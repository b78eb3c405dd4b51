//! Stratum's cryptography: encryption at rest, key rotation, webhook signing and
//! verification, secret redaction and API key material.
//!
//! The crate performs no I/O; callers hand it keys and bytes and store what it returns.

#![warn(missing_docs)]

pub mod envelope;
pub mod error;
pub mod keyring;
pub mod secret;
pub mod shared;
pub mod signing;
pub mod tokens;

pub use envelope::{envelope_key_id, is_envelope, EncryptionKey};
pub use error::CryptoError;
pub use keyring::{reencrypt, Keyring};
pub use secret::{SecretString, REDACTED};
pub use shared::SharedKeyring;
pub use signing::{
    generate_whsec, sign_delivery, sign_standard, sign_stratum, signing_key_bytes, verify_standard,
    verify_stratum, Signatures, DEFAULT_TOLERANCE_SECS,
};
pub use tokens::{constant_time_eq, generate_api_key, is_api_key_shaped, random_token, sha256_hex};
