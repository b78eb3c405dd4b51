//! Optimistic concurrency: every mutable resource carries a version that each write checks
//! and bumps. A read-modify-write whose write finds a newer version re-reads and tries
//! again, so no change is lost and each audit entry's before-state is the state it replaced;
//! a client that sent `If-Match` gets "precondition failed" instead.

/// What a client's `If-Match` asks of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No `If-Match` (or `*`): the change applies to whatever is current.
    #[default]
    Any,
    /// Only while the resource is still at this version.
    Version(i64),
    /// An `If-Match` that names no version this server issued: never current.
    Never,
}

impl Precondition {
    /// Parses an `If-Match` header value: `*`, `"<version>"` (a list of them is accepted,
    /// any one matching); a weak or unknown tag never matches (RFC 9110 strong comparison).
    pub fn from_if_match(header: &str) -> Self {
        let mut versions = Vec::new();
        for tag in header.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Self::Any;
            }
            if let Some(v) = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<i64>().ok())
            {
                versions.push(v);
            }
        }
        // One version is the common case; of several, none can be checked atomically
        // against the write except the one that is current when read.
        match versions.as_slice() {
            [] => Self::Never,
            [v] => Self::Version(*v),
            _ => Self::Version(versions[0]),
        }
    }

    /// Whether a resource at `current` satisfies it.
    pub fn holds(self, current: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Version(v) => v == current,
            Self::Never => false,
        }
    }

    /// True when the client named a version: a stale write then fails instead of retrying.
    pub fn is_conditional(self) -> bool {
        !matches!(self, Self::Any)
    }
}

/// The strong `ETag` of a resource at `version`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// How many times a read-modify-write re-reads after its write found a newer version.
/// Each retry means another writer committed meanwhile, so the loop always makes progress
/// as a whole; the bound only caps one request's share of a pathological hot spot.
pub const WRITE_ATTEMPTS: u32 = 64;

/// What a read-modify-write does when its write found the version changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Read again and recompute.
    Retry,
    /// The client's `If-Match` no longer holds.
    PreconditionFailed,
    /// Too many concurrent writers on one resource; answer a conflict.
    GiveUp,
}

/// Why a versioned write does not apply; each domain maps it into its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    /// `If-Match` names a version that is not current (the text says which is).
    PreconditionFailed(String),
    /// The write stayed stale through [`WRITE_ATTEMPTS`] re-reads.
    TooContended,
}

/// Fails unless `precondition` holds for a resource at `current`.
pub fn check_precondition(precondition: Precondition, current: i64) -> Result<(), WriteRefused> {
    if precondition.holds(current) {
        Ok(())
    } else {
        Err(WriteRefused::PreconditionFailed(format!(
            "the current version is {current}"
        )))
    }
}

/// After a write found a newer version than it read, at attempt `attempt` (1-based):
/// `Ok` to read again and recompute, or why the write is refused.
pub fn after_stale(precondition: Precondition, attempt: u32) -> Result<(), WriteRefused> {
    match on_stale(precondition, attempt) {
        OnStale::Retry => Ok(()),
        OnStale::PreconditionFailed => Err(WriteRefused::PreconditionFailed(
            "the resource changed concurrently".into(),
        )),
        OnStale::GiveUp => Err(WriteRefused::TooContended),
    }
}

/// Decides what follows a stale write at attempt `attempt` (1-based).
pub fn on_stale(precondition: Precondition, attempt: u32) -> OnStale {
    if precondition.is_conditional() {
        OnStale::PreconditionFailed
    } else if attempt >= WRITE_ATTEMPTS {
        OnStale::GiveUp
    } else {
        OnStale::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_if_match() {
        assert_eq!(
            Precondition::from_if_match("\"7\""),
            Precondition::Version(7)
        );
        assert_eq!(
            Precondition::from_if_match(" \"7\" , \"8\""),
            Precondition::Version(7)
        );
        assert_eq!(Precondition::from_if_match("*"), Precondition::Any);
        assert_eq!(Precondition::from_if_match("W/\"7\""), Precondition::Never);
        assert_eq!(Precondition::from_if_match("7"), Precondition::Never);
        assert_eq!(Precondition::from_if_match("\"x\""), Precondition::Never);
        assert_eq!(Precondition::from_if_match(""), Precondition::Never);
    }

    #[test]
    fn holds_and_stale_verdicts() {
        assert!(Precondition::Any.holds(3));
        assert!(Precondition::Version(3).holds(3));
        assert!(!Precondition::Version(2).holds(3));
        assert!(!Precondition::Never.holds(3));
        assert_eq!(on_stale(Precondition::Any, 1), OnStale::Retry);
        assert_eq!(on_stale(Precondition::Any, WRITE_ATTEMPTS), OnStale::GiveUp);
        assert_eq!(
            on_stale(Precondition::Version(1), 1),
            OnStale::PreconditionFailed
        );
        assert_eq!(etag(12), "\"12\"");
    }
}
