//! A keyring shared by a running process and swapped at once when the key rotates.

use std::sync::{Arc, PoisonError, RwLock};

use crate::keyring::Keyring;

/// A cheaply clonable handle to the process's current keyring.
#[derive(Debug, Clone)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    /// Shares `keyring`.
    pub fn new(keyring: Keyring) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keyring))))
    }

    /// The keyring in force now; callers keep it for the duration of one operation.
    pub fn get(&self) -> Arc<Keyring> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the held key `key_id` the one new values are encrypted with (another process
    /// rotated to it); false, and nothing changes, when this process does not hold it.
    pub fn adopt(&self, key_id: &str) -> bool {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if guard.current().key_id() == key_id {
            return true;
        }
        match guard.activate(key_id) {
            Some(ring) => {
                *guard = Arc::new(ring);
                true
            }
            None => false,
        }
    }

    /// Replaces the keyring in force by `change(current)`, atomically with respect to every
    /// other change.
    pub fn update(&self, change: impl FnOnce(&Keyring) -> Keyring) {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(change(&guard));
    }

    /// Puts `keyring` in force for every later [`get`](Self::get).
    pub fn replace(&self, keyring: Keyring) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_seen_by_every_clone() {
        let a = Keyring::from_env_values(&"a".repeat(32), None).unwrap();
        let b = Keyring::from_env_values(&"b".repeat(32), None).unwrap();
        let shared = SharedKeyring::new(a.clone());
        let other = shared.clone();
        assert_eq!(other.get().current().key_id(), a.current().key_id());
        shared.replace(b.clone());
        assert_eq!(other.get().current().key_id(), b.current().key_id());
    }
}
