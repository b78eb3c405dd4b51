//! AES-256-GCM envelopes for values encrypted at rest.
//!
//! A stored value reads `v1:<key_id>:<base64url(nonce || ciphertext || tag)>`. The version
//! and key id are bound as associated data, so neither can be swapped without the
//! authentication failing, and a process holding the wrong key recognises that from the
//! key id instead of reporting tampering.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::error::CryptoError;

/// The shortest master key accepted, in bytes.
pub const MIN_MASTER_KEY_LEN: usize = 32;

const VERSION: &str = "v1";
// Changing the salt or the infos changes every derived key: existing data would no longer
// decrypt, so a new derivation needs a new envelope version.
const HKDF_SALT: &[u8] = b"stratum/encryption-at-rest/v1";
const INFO_AES_KEY: &[u8] = b"aes-256-gcm";
const INFO_KEY_ID: &[u8] = b"key-id";
const KEY_ID_BYTES: usize = 4;
const KEY_ID_LEN: usize = KEY_ID_BYTES * 2;
const TAG_LEN: usize = 16;

/// An AES-256-GCM key derived from `STRATUM_ENCRYPTION_KEY`, with its public key id.
///
/// ```
/// use stratum_crypto::{envelope_key_id, CryptoError, EncryptionKey};
///
/// let key = EncryptionKey::derive("a-master-key-of-at-least-32-bytes!")?;
/// let stored = key.encrypt_str("whsec_secret")?;
/// // `v1:<key id>:<base64url(nonce || ciphertext || tag)>`; never the plaintext.
/// assert!(stored.starts_with(&format!("v1:{}:", key.key_id())));
/// assert!(!stored.contains("whsec_secret"));
/// assert_eq!(envelope_key_id(&stored), Some(key.key_id()));
/// assert_eq!(key.decrypt_str(&stored)?, "whsec_secret");
///
/// // Another key recognises the envelope is not its own ...
/// let other = EncryptionKey::derive("another-master-key-of-32-bytes-or-more")?;
/// assert!(matches!(other.decrypt_str(&stored), Err(CryptoError::KeyMismatch { .. })));
/// // ... and an altered envelope fails authentication.
/// let (head, payload) = stored.rsplit_once(':').unwrap();
/// let flipped = if payload.starts_with('A') { 'B' } else { 'A' };
/// let tampered = format!("{head}:{flipped}{}", &payload[1..]);
/// assert_eq!(key.decrypt_str(&tampered), Err(CryptoError::Decrypt));
/// // Short master keys are refused.
/// assert!(matches!(EncryptionKey::derive("short"), Err(CryptoError::KeyTooShort { .. })));
/// # Ok::<(), CryptoError>(())
/// ```
#[derive(Clone)]
pub struct EncryptionKey {
    key: LessSafeKey,
    key_id: String,
}

struct OutputLen(usize);

impl hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl EncryptionKey {
    /// Derives the encryption key and key id from a master key of at least 32 bytes.
    pub fn derive(master: &str) -> Result<Self, CryptoError> {
        if master.len() < MIN_MASTER_KEY_LEN {
            return Err(CryptoError::KeyTooShort {
                min: MIN_MASTER_KEY_LEN,
                got: master.len(),
            });
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(master.as_bytes());
        // ring only refuses expansions longer than 255 hash blocks; ours are 32 and 4 bytes.
        let okm = prk
            .expand(&[INFO_AES_KEY], &AES_256_GCM)
            .map_err(|_| CryptoError::Encrypt)?;
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let mut id = [0u8; KEY_ID_BYTES];
        prk.expand(&[INFO_KEY_ID], OutputLen(KEY_ID_BYTES))
            .and_then(|okm| okm.fill(&mut id))
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(Self {
            key,
            key_id: hex::encode(id),
        })
    }

    /// The short public id of this key (8 lowercase hex characters).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plaintext` under a fresh random nonce into a stored envelope.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Encrypt)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let aad = aad_for(&self.key_id);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Encrypt)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(format!("{aad}:{}", URL_SAFE_NO_PAD.encode(&buf)))
    }

    /// Encrypts a UTF-8 string into a stored envelope.
    pub fn encrypt_str(&self, plaintext: &str) -> Result<String, CryptoError> {
        self.encrypt(plaintext.as_bytes())
    }

    /// Decrypts a stored envelope made with this key.
    ///
    /// `Malformed` if `stored` is not an envelope, `KeyMismatch` if another key made it,
    /// `Decrypt` if it was altered.
    pub fn decrypt(&self, stored: &str) -> Result<Vec<u8>, CryptoError> {
        let parsed = parse(stored).ok_or(CryptoError::Malformed)?;
        if parsed.key_id != self.key_id {
            return Err(CryptoError::KeyMismatch {
                expected: self.key_id.clone(),
                found: parsed.key_id.to_owned(),
            });
        }
        let mut buf = decode_payload(parsed.payload).ok_or(CryptoError::Malformed)?;
        let nonce = Nonce::try_assume_unique_for_key(&buf[..NONCE_LEN])
            .map_err(|_| CryptoError::Malformed)?;
        let aad = aad_for(parsed.key_id);
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf[NONCE_LEN..])
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.drain(..NONCE_LEN);
        buf.truncate(len);
        Ok(buf)
    }

    /// Decrypts a stored envelope holding UTF-8 text; other bytes are `Malformed`.
    pub fn decrypt_str(&self, stored: &str) -> Result<String, CryptoError> {
        String::from_utf8(self.decrypt(stored)?).map_err(|_| CryptoError::Malformed)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        self.key_id == other.key_id
    }
}

impl Eq for EncryptionKey {}

/// The key id recorded in a stored envelope, read without decrypting.
pub fn envelope_key_id(stored: &str) -> Option<&str> {
    parse(stored).map(|p| p.key_id)
}

/// Whether `s` has the shape of a stored envelope (version, key id, decodable payload).
pub fn is_envelope(s: &str) -> bool {
    parse(s).and_then(|p| decode_payload(p.payload)).is_some()
}

struct Parsed<'a> {
    key_id: &'a str,
    payload: &'a str,
}

fn parse(stored: &str) -> Option<Parsed<'_>> {
    let rest = stored.strip_prefix(VERSION)?.strip_prefix(':')?;
    let (key_id, payload) = rest.split_once(':')?;
    let valid_id = key_id.len() == KEY_ID_LEN
        && key_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid_id.then_some(Parsed { key_id, payload })
}

fn decode_payload(payload: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .filter(|buf| buf.len() >= NONCE_LEN + TAG_LEN)
}

fn aad_for(key_id: &str) -> String {
    format!("{VERSION}:{key_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASTER: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn key() -> EncryptionKey {
        EncryptionKey::derive(MASTER).unwrap()
    }

    fn split(stored: &str) -> (&str, Vec<u8>) {
        let idx = stored.rfind(':').unwrap();
        (
            &stored[..=idx],
            URL_SAFE_NO_PAD.decode(&stored[idx + 1..]).unwrap(),
        )
    }

    #[test]
    fn round_trip() {
        let k = key();
        let stored = k.encrypt(b"hunter2").unwrap();
        assert_eq!(k.decrypt(&stored).unwrap(), b"hunter2");
        assert_eq!(
            k.decrypt_str(&k.encrypt_str("héllo").unwrap()).unwrap(),
            "héllo"
        );
        assert_eq!(k.decrypt(&k.encrypt(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn format_is_versioned_with_key_id() {
        let k = key();
        let stored = k.encrypt(b"x").unwrap();
        let prefix = format!("v1:{}:", k.key_id());
        assert!(stored.starts_with(&prefix), "{stored}");
        assert_eq!(envelope_key_id(&stored), Some(k.key_id()));
        assert!(is_envelope(&stored));
        let (_, bytes) = split(&stored);
        assert_eq!(bytes.len(), NONCE_LEN + 1 + TAG_LEN);
    }

    #[test]
    fn derivation_is_deterministic_and_key_specific() {
        let a = key();
        let b = EncryptionKey::derive(MASTER).unwrap();
        let c = EncryptionKey::derive(OTHER).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 8);
        assert!(a.key_id().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.key_id(), c.key_id());
        assert_eq!(b.decrypt(&a.encrypt(b"same").unwrap()).unwrap(), b"same");
    }

    #[test]
    fn key_id_is_not_a_prefix_of_the_aes_key_stream() {
        // The id comes from its own HKDF info; deriving with the AES info must not yield it.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(MASTER.as_bytes());
        let mut aes = [0u8; 32];
        prk.expand(&[INFO_AES_KEY], OutputLen(32))
            .unwrap()
            .fill(&mut aes)
            .unwrap();
        assert_ne!(hex::encode(&aes[..KEY_ID_BYTES]), key().key_id());
        assert!(!hex::encode(aes).contains(key().key_id()));
    }

    #[test]
    fn short_master_rejected() {
        let err = EncryptionKey::derive("too-short").unwrap_err();
        assert_eq!(err, CryptoError::KeyTooShort { min: 32, got: 9 });
        let msg = err.to_string();
        assert!(
            msg.contains("STRATUM_ENCRYPTION_KEY") && msg.contains("32"),
            "{msg}"
        );
        assert!(EncryptionKey::derive(&"a".repeat(31)).is_err());
        assert!(EncryptionKey::derive(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn debug_hides_key_material() {
        let k = key();
        let dbg = format!("{k:?}");
        assert_eq!(
            dbg,
            format!("EncryptionKey {{ key_id: {:?}, .. }}", k.key_id())
        );
        assert!(!dbg.contains(MASTER));
    }

    #[test]
    fn nonces_differ_between_encryptions() {
        let k = key();
        let (_, a) = split(&k.encrypt(b"same plaintext").unwrap());
        let (_, b) = split(&k.encrypt(b"same plaintext").unwrap());
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = key();
        let stored = k.encrypt(b"sensitive config value").unwrap();
        let (prefix, bytes) = split(&stored);
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            let tampered = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&flipped));
            assert_eq!(k.decrypt(&tampered), Err(CryptoError::Decrypt), "bit {i}");
        }
    }

    #[test]
    fn truncated_or_extended_payload_is_rejected() {
        let k = key();
        let stored = k.encrypt(b"value").unwrap();
        let (prefix, bytes) = split(&stored);
        let shorter = format!(
            "{prefix}{}",
            URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1])
        );
        assert_eq!(k.decrypt(&shorter), Err(CryptoError::Decrypt));
        let mut longer = bytes.clone();
        longer.push(0);
        let longer = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&longer));
        assert_eq!(k.decrypt(&longer), Err(CryptoError::Decrypt));
        let tiny = format!(
            "{prefix}{}",
            URL_SAFE_NO_PAD.encode(&bytes[..NONCE_LEN + TAG_LEN - 1])
        );
        assert_eq!(k.decrypt(&tiny), Err(CryptoError::Malformed));
    }

    #[test]
    fn tampered_version_is_malformed() {
        let k = key();
        let stored = k.encrypt(b"value").unwrap();
        for bad in [
            stored.replacen("v1:", "v2:", 1),
            stored.replacen("v1:", "V1:", 1),
            stored.replacen("v1:", "", 1),
            stored.replacen("v1:", "v1::", 1),
        ] {
            assert_eq!(k.decrypt(&bad), Err(CryptoError::Malformed), "{bad}");
            assert!(!is_envelope(&bad));
        }
    }

    #[test]
    fn tampered_key_id_is_rejected() {
        let k = key();
        let stored = k.encrypt(b"value").unwrap();
        let forged = stored.replacen(k.key_id(), "00000000", 1);
        assert_eq!(
            k.decrypt(&forged),
            Err(CryptoError::KeyMismatch {
                expected: k.key_id().to_owned(),
                found: "00000000".to_owned()
            })
        );
        let upper = stored.replacen(k.key_id(), "ABCDEF12", 1);
        assert_eq!(k.decrypt(&upper), Err(CryptoError::Malformed));
        let short = stored.replacen(k.key_id(), &k.key_id()[..7], 1);
        assert_eq!(k.decrypt(&short), Err(CryptoError::Malformed));
    }

    #[test]
    fn key_id_is_bound_as_associated_data() {
        // Re-label a value from key A as key B's and decrypt with a key that claims B's id
        // but holds A's AES key: the AAD differs, so authentication must fail.
        let a = key();
        let b = EncryptionKey::derive(OTHER).unwrap();
        let stored = a.encrypt(b"value").unwrap();
        let relabelled = stored.replacen(a.key_id(), b.key_id(), 1);
        let impostor = EncryptionKey {
            key: a.key.clone(),
            key_id: b.key_id().to_owned(),
        };
        assert_eq!(impostor.decrypt(&relabelled), Err(CryptoError::Decrypt));
        assert_eq!(b.decrypt(&relabelled), Err(CryptoError::Decrypt));
    }

    #[test]
    fn wrong_key_is_key_mismatch() {
        let a = key();
        let b = EncryptionKey::derive(OTHER).unwrap();
        let err = b.decrypt(&a.encrypt(b"value").unwrap()).unwrap_err();
        assert_eq!(
            err,
            CryptoError::KeyMismatch {
                expected: b.key_id().to_owned(),
                found: a.key_id().to_owned()
            }
        );
        assert!(err.to_string().contains(a.key_id()));
    }

    #[test]
    fn garbage_is_malformed() {
        let k = key();
        let prefix = format!("v1:{}:", k.key_id());
        for bad in [
            String::new(),
            "plain text".to_owned(),
            prefix.clone(),
            format!("{prefix}!!!not base64!!!"),
            format!("{prefix}AAAA="),
            format!("{prefix}{}", "A".repeat(40) + "+/"),
        ] {
            assert_eq!(k.decrypt(&bad), Err(CryptoError::Malformed), "{bad}");
            assert!(!is_envelope(&bad), "{bad}");
        }
        assert_eq!(envelope_key_id("plain"), None);
    }

    #[test]
    fn non_utf8_plaintext_is_malformed_as_str() {
        let k = key();
        let stored = k.encrypt(&[0xff, 0xfe]).unwrap();
        assert_eq!(k.decrypt_str(&stored), Err(CryptoError::Malformed));
    }

    proptest! {
        #[test]
        fn prop_round_trip(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let k = key();
            let stored = k.encrypt(&data).unwrap();
            prop_assert!(is_envelope(&stored));
            prop_assert_eq!(k.decrypt(&stored).unwrap(), data);
        }

        #[test]
        fn prop_str_round_trip(s in ".{0,64}") {
            let k = key();
            prop_assert_eq!(k.decrypt_str(&k.encrypt_str(&s).unwrap()).unwrap(), s);
        }
    }
}
