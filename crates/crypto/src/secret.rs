//! A string that never shows itself in logs, debug output or serialized payloads.

use std::fmt;

/// What a redacted value prints as, everywhere.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string: readable only through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret in clear; call only where the clear value is needed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for SecretString {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

// Serializing as the placeholder keeps secrets out of audit entries and event payloads
// even when a whole struct is serialized without thought.
#[cfg(feature = "serde")]
impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([REDACTED])");
    }

    #[test]
    fn exposes_and_compares_the_real_value() {
        let s = SecretString::from("hunter2");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s, SecretString::new(String::from("hunter2")));
        assert_ne!(s, SecretString::new("hunter3"));
        assert_eq!(s.into_inner(), "hunter2");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_reads_clear_and_writes_redacted() {
        let s: SecretString = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[REDACTED]\"");
        assert!(serde_json::from_str::<SecretString>("42").is_err());
    }
}
