//! The key new values are encrypted with, plus every other key this process may read.

use crate::envelope::{envelope_key_id, EncryptionKey};
use crate::error::CryptoError;

/// Encrypts with the current key and decrypts with whichever held key a value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    current: EncryptionKey,
    /// Readable besides `current` (previous keys, the next key of a rolling rotation);
    /// no duplicates, never `current`.
    others: Vec<EncryptionKey>,
}

impl Keyring {
    /// Builds a keyring; a previous key equal to the current one is dropped.
    pub fn new(current: EncryptionKey, previous: Option<EncryptionKey>) -> Self {
        Self::with_keys(current, previous)
    }

    /// Builds a keyring that encrypts with `current` and can also read `others`
    /// (duplicates and copies of `current` are dropped).
    pub fn with_keys(
        current: EncryptionKey,
        others: impl IntoIterator<Item = EncryptionKey>,
    ) -> Self {
        let mut ring = Self {
            current,
            others: Vec::new(),
        };
        for k in others {
            ring.add(k);
        }
        ring
    }

    fn add(&mut self, key: EncryptionKey) {
        if key != self.current && !self.others.contains(&key) {
            self.others.push(key);
        }
    }

    /// Derives both keys from master key strings as read from the environment.
    pub fn from_env_values(current: &str, previous: Option<&str>) -> Result<Self, CryptoError> {
        Self::from_env(current, previous)
    }

    /// Derives the current key and any number of further readable keys from master key
    /// strings as read from the environment.
    pub fn from_env<'a>(
        current: &str,
        readable: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, CryptoError> {
        let current = EncryptionKey::derive(current)?;
        let others = readable
            .into_iter()
            .map(EncryptionKey::derive)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_keys(current, others))
    }

    /// The key new values are encrypted with.
    pub fn current(&self) -> &EncryptionKey {
        &self.current
    }

    /// The first key readable besides the current one (the key being rotated away from
    /// when the keyring came from `new`), if any.
    pub fn previous(&self) -> Option<&EncryptionKey> {
        self.others.first()
    }

    /// Every key this keyring can read, the current one first.
    pub fn keys(&self) -> impl Iterator<Item = &EncryptionKey> {
        std::iter::once(&self.current).chain(self.others.iter())
    }

    /// The held key with this key id, if any.
    pub fn key(&self, key_id: &str) -> Option<&EncryptionKey> {
        self.keys().find(|k| k.key_id() == key_id)
    }

    /// Whether this keyring holds a key with this key id.
    pub fn holds(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    /// This keyring encrypting with the held key `key_id` instead (every key stays
    /// readable); `None` when it does not hold that key.
    pub fn activate(&self, key_id: &str) -> Option<Self> {
        let key = self.key(key_id)?.clone();
        Some(self.rotated_to(key))
    }

    /// This keyring encrypting with `key` from now on; every key held so far stays readable.
    pub fn rotated_to(&self, key: EncryptionKey) -> Self {
        let mut others = vec![self.current.clone()];
        others.extend(self.others.iter().cloned());
        Self::with_keys(key, others)
    }

    /// This keyring able to read `key` too (it keeps encrypting with its current key).
    pub fn with_readable(&self, key: EncryptionKey) -> Self {
        let mut ring = self.clone();
        ring.add(key);
        ring
    }

    /// This keyring without the readable key `key_id`; the current key always stays.
    pub fn without(&self, key_id: &str) -> Self {
        let mut ring = self.clone();
        ring.others.retain(|k| k.key_id() != key_id);
        ring
    }

    /// Encrypts with the current key.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, CryptoError> {
        self.current.encrypt(plaintext)
    }

    /// Encrypts UTF-8 text with the current key.
    pub fn encrypt_str(&self, plaintext: &str) -> Result<String, CryptoError> {
        self.current.encrypt_str(plaintext)
    }

    /// Decrypts with the key the envelope names; `KeyMismatch` (expecting the current
    /// key) when it names none this keyring holds.
    pub fn decrypt(&self, stored: &str) -> Result<Vec<u8>, CryptoError> {
        self.key_for(stored)?.decrypt(stored)
    }

    /// Decrypts UTF-8 text with the key the envelope names.
    pub fn decrypt_str(&self, stored: &str) -> Result<String, CryptoError> {
        self.key_for(stored)?.decrypt_str(stored)
    }

    /// Whether the envelope names a key this keyring holds (says nothing about tampering).
    pub fn can_decrypt(&self, stored: &str) -> bool {
        self.key_for(stored).is_ok()
    }

    fn key_for(&self, stored: &str) -> Result<&EncryptionKey, CryptoError> {
        let key_id = envelope_key_id(stored).ok_or(CryptoError::Malformed)?;
        self.key(key_id).ok_or_else(|| CryptoError::KeyMismatch {
            expected: self.current.key_id().to_owned(),
            found: key_id.to_owned(),
        })
    }
}

/// Re-encrypts a value stored under `old` with `new`; `KeyMismatch` if `old` did not make it.
///
/// A key rotation, value by value: a keyring holding the new key as current and the old one
/// as previous reads both while the rotation runs, and writes under the new key only.
///
/// ```
/// use stratum_crypto::{reencrypt, EncryptionKey, Keyring};
///
/// let old = EncryptionKey::derive("old-master-key-0123456789abcdefgh")?;
/// let new = EncryptionKey::derive("new-master-key-0123456789abcdefgh")?;
/// let stored = old.encrypt_str("secret")?;
///
/// let during = Keyring::new(new.clone(), Some(old.clone()));
/// assert_eq!(during.decrypt_str(&stored)?, "secret");
///
/// let rotated = reencrypt(&old, &new, &stored)?;
/// assert_eq!(new.decrypt_str(&rotated)?, "secret");
/// assert!(old.decrypt_str(&rotated).is_err());
/// assert!(reencrypt(&old, &new, &rotated).is_err());
/// # Ok::<(), stratum_crypto::CryptoError>(())
/// ```
pub fn reencrypt(
    old: &EncryptionKey,
    new: &EncryptionKey,
    stored: &str,
) -> Result<String, CryptoError> {
    new.encrypt(&old.decrypt(stored)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-master-key-0123456789abcdefgh";
    const NEW: &str = "new-master-key-0123456789abcdefgh";
    const STRANGER: &str = "some-other-key-0123456789abcdefgh";

    fn k(master: &str) -> EncryptionKey {
        EncryptionKey::derive(master).unwrap()
    }

    #[test]
    fn encrypts_with_current() {
        let ring = Keyring::from_env_values(NEW, Some(OLD)).unwrap();
        let stored = ring.encrypt_str("v").unwrap();
        assert_eq!(envelope_key_id(&stored), Some(k(NEW).key_id()));
        assert_eq!(k(NEW).decrypt_str(&stored).unwrap(), "v");
        assert_eq!(ring.decrypt_str(&stored).unwrap(), "v");
        assert_eq!(ring.decrypt(&ring.encrypt(b"b").unwrap()).unwrap(), b"b");
    }

    #[test]
    fn picks_previous_key_by_id() {
        let stored = k(OLD).encrypt_str("legacy").unwrap();
        let ring = Keyring::new(k(NEW), Some(k(OLD)));
        assert_eq!(ring.previous(), Some(&k(OLD)));
        assert!(ring.can_decrypt(&stored));
        assert_eq!(ring.decrypt_str(&stored).unwrap(), "legacy");
        assert_eq!(ring.decrypt(&stored).unwrap(), b"legacy");
    }

    #[test]
    fn unknown_key_is_mismatch_against_current() {
        let stored = k(STRANGER).encrypt(b"x").unwrap();
        let ring = Keyring::new(k(NEW), Some(k(OLD)));
        assert!(!ring.can_decrypt(&stored));
        assert_eq!(
            ring.decrypt(&stored),
            Err(CryptoError::KeyMismatch {
                expected: k(NEW).key_id().to_owned(),
                found: k(STRANGER).key_id().to_owned(),
            })
        );
        let only_new = Keyring::new(k(NEW), None);
        assert!(!only_new.can_decrypt(&k(OLD).encrypt(b"x").unwrap()));
        assert_eq!(ring.decrypt("not an envelope"), Err(CryptoError::Malformed));
        assert!(!ring.can_decrypt("not an envelope"));
    }

    #[test]
    fn reads_every_held_key_and_activates_by_id() {
        let ring = Keyring::from_env(OLD, [NEW, OLD, NEW]).unwrap();
        assert_eq!(ring.keys().count(), 2);
        assert!(ring.can_decrypt(&k(NEW).encrypt(b"x").unwrap()));
        assert!(ring.holds(k(NEW).key_id()) && !ring.holds(k(STRANGER).key_id()));
        let active = ring.activate(k(NEW).key_id()).unwrap();
        assert_eq!(active.current(), &k(NEW));
        assert!(active.can_decrypt(&k(OLD).encrypt(b"x").unwrap()));
        assert!(ring.activate(k(STRANGER).key_id()).is_none());
        let plus = ring.with_readable(k(STRANGER));
        assert_eq!(plus.current(), &k(OLD));
        assert!(plus.holds(k(STRANGER).key_id()));
        assert!(!plus
            .without(k(STRANGER).key_id())
            .holds(k(STRANGER).key_id()));
        assert!(
            plus.without(k(OLD).key_id()).holds(k(OLD).key_id()),
            "current stays"
        );
        let rotated = ring.rotated_to(k(STRANGER));
        assert_eq!(rotated.current(), &k(STRANGER));
        assert_eq!(rotated.keys().count(), 3);
    }

    #[test]
    fn previous_equal_to_current_is_dropped() {
        let ring = Keyring::from_env_values(NEW, Some(NEW)).unwrap();
        assert!(ring.previous().is_none());
    }

    #[test]
    fn short_keys_rejected() {
        assert!(matches!(
            Keyring::from_env_values("short", None),
            Err(CryptoError::KeyTooShort { .. })
        ));
        assert!(matches!(
            Keyring::from_env_values(NEW, Some("short")),
            Err(CryptoError::KeyTooShort { got: 5, .. })
        ));
    }

    #[test]
    fn debug_hides_masters() {
        let ring = Keyring::from_env_values(NEW, Some(OLD)).unwrap();
        let dbg = format!("{ring:?}");
        assert!(dbg.contains(k(NEW).key_id()) && dbg.contains(k(OLD).key_id()));
        assert!(!dbg.contains(NEW) && !dbg.contains(OLD));
    }

    #[test]
    fn reencrypt_round_trip() {
        let (old, new) = (k(OLD), k(NEW));
        let stored = old.encrypt_str("whsec_abc").unwrap();
        let rotated = reencrypt(&old, &new, &stored).unwrap();
        assert_eq!(envelope_key_id(&rotated), Some(new.key_id()));
        assert_eq!(new.decrypt_str(&rotated).unwrap(), "whsec_abc");
        assert!(matches!(
            old.decrypt(&rotated),
            Err(CryptoError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn reencrypt_refuses_values_not_under_old() {
        let (old, new) = (k(OLD), k(NEW));
        let under_new = new.encrypt(b"x").unwrap();
        assert_eq!(
            reencrypt(&old, &new, &under_new),
            Err(CryptoError::KeyMismatch {
                expected: old.key_id().to_owned(),
                found: new.key_id().to_owned(),
            })
        );
        let stranger = k(STRANGER).encrypt(b"x").unwrap();
        assert!(matches!(
            reencrypt(&old, &new, &stranger),
            Err(CryptoError::KeyMismatch { .. })
        ));
    }
}
