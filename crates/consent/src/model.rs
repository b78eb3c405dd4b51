//! Consent records and their validated parts.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use stratum_core::timefmt::{rfc3339, rfc3339_opt};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ConsentError;

/// What consent is given for: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Purpose(String);

impl Purpose {
    /// Longest accepted purpose.
    pub const MAX_LEN: usize = 64;

    /// Validates a purpose: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
    ///
    /// ```
    /// use stratum_consent::{ConsentError, Purpose};
    ///
    /// assert_eq!(Purpose::parse("marketing.email").unwrap().as_str(), "marketing.email");
    /// assert!(matches!(
    ///     Purpose::parse("Marketing"),
    ///     Err(ConsentError::Validation { field: "purpose", .. })
    /// ));
    /// ```
    pub fn parse(raw: &str) -> Result<Self, ConsentError> {
        let mut chars = raw.chars();
        let ok = raw.len() <= Self::MAX_LEN
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if !ok {
            return Err(ConsentError::invalid(
                "purpose",
                "must match ^[a-z0-9][a-z0-9_.-]{0,63}$",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The purpose as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose consent it is: an opaque id of 1–255 characters without control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct SubjectId(String);

impl SubjectId {
    /// Longest accepted subject id, in characters.
    pub const MAX_CHARS: usize = 255;

    /// Validates a subject id.
    ///
    /// ```
    /// use stratum_consent::SubjectId;
    ///
    /// assert_eq!(SubjectId::parse("user-42").unwrap().to_string(), "user-42");
    /// assert!(SubjectId::parse("").is_err());
    /// assert!(SubjectId::parse("line\nbreak").is_err());
    /// ```
    pub fn parse(raw: &str) -> Result<Self, ConsentError> {
        let n = raw.chars().count();
        if n == 0 || n > Self::MAX_CHARS || raw.chars().any(char::is_control) {
            return Err(ConsentError::invalid(
                "subject_id",
                "must be 1-255 characters without control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One subject's consent to one purpose within one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsentRecord {
    /// Id; kept across re-grants.
    pub id: Uuid,
    /// The tenant the subject belongs to.
    pub tenant_id: Uuid,
    /// Whose consent.
    pub subject_id: SubjectId,
    /// For what.
    pub purpose: Purpose,
    /// False once revoked.
    pub granted: bool,
    /// The latest grant.
    #[serde(with = "rfc3339")]
    pub granted_at: OffsetDateTime,
    /// When revoked; cleared by a new grant.
    #[serde(with = "rfc3339_opt")]
    pub revoked_at: Option<OffsetDateTime>,
    /// When the grant lapses; `None` = never.
    #[serde(with = "rfc3339_opt")]
    pub expires_at: Option<OffsetDateTime>,
    /// Free-form object (e.g. where and how consent was collected).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Value,
    /// First granted.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Changes with every write; what a write checks it replaces. Not part of the JSON shape.
    #[serde(skip)]
    pub version: i64,
}

impl ConsentRecord {
    /// True when the consent holds at `at`: granted, not revoked, not expired.
    pub fn is_active_at(&self, at: OffsetDateTime) -> bool {
        self.granted && self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > at)
    }
}

/// What listing filters on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsentFilter {
    /// Only this subject's records.
    pub subject_id: Option<SubjectId>,
    /// Only records for this purpose.
    pub purpose: Option<Purpose>,
    /// Only records active at this instant (granted, not revoked, not expired).
    pub active_at: Option<OffsetDateTime>,
    /// Only records not active at this instant (revoked or expired).
    pub inactive_at: Option<OffsetDateTime>,
}

/// Metadata must be a JSON object; absent or null means `{}`.
pub fn validate_metadata(v: Option<Value>) -> Result<Value, ConsentError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => {
            stratum_core::text::check_json("metadata", &v).map_err(|e| {
                ConsentError::invalid("metadata", format!("{} (at {})", e.message, e.path))
            })?;
            Ok(v)
        }
        Some(_) => Err(ConsentError::invalid("metadata", "must be a JSON object")),
    }
}

/// An optional expiry: RFC 3339 and strictly after `now`.
///
/// ```
/// use stratum_consent::validate_expires_at;
/// use time::macros::datetime;
///
/// let now = datetime!(2026-01-01 00:00 UTC);
/// let later = validate_expires_at(Some("2026-06-30T12:00:00Z"), now).unwrap();
/// assert_eq!(later, Some(datetime!(2026-06-30 12:00 UTC)));
/// assert!(validate_expires_at(Some("2025-12-31T23:59:59Z"), now).is_err());
/// assert!(validate_expires_at(Some("tomorrow"), now).is_err());
/// assert_eq!(validate_expires_at(None, now).unwrap(), None);
/// ```
pub fn validate_expires_at(
    raw: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, ConsentError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let t = stratum_core::timefmt::parse(raw)
        .map_err(|_| ConsentError::invalid("expires_at", "must be an RFC 3339 timestamp"))?;
    if t <= now {
        return Err(ConsentError::invalid("expires_at", "must be in the future"));
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);

    #[test]
    fn purposes() {
        let longest = format!("a{}", "b".repeat(63));
        for ok in [
            "a",
            "0",
            "marketing",
            "email.news-letter_2",
            longest.as_str(),
        ] {
            assert_eq!(Purpose::parse(ok).unwrap().as_str(), ok);
        }
        let too_long = format!("a{}", "b".repeat(64));
        for bad in [
            "",
            "Marketing",
            "_x",
            ".x",
            "-x",
            "a b",
            "a/b",
            "é",
            "a\n",
            too_long.as_str(),
        ] {
            match Purpose::parse(bad) {
                Err(ConsentError::Validation { field, .. }) => assert_eq!(field, "purpose"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn subject_ids() {
        let longest = "é".repeat(255);
        for ok in ["u", "user 42", "alice@example.com", longest.as_str()] {
            assert_eq!(SubjectId::parse(ok).unwrap().as_str(), ok);
        }
        let too_long = "x".repeat(256);
        for bad in [
            "",
            "a\u{0}b",
            "tab\there",
            "line\n",
            "\u{7f}",
            too_long.as_str(),
        ] {
            match SubjectId::parse(bad) {
                Err(ConsentError::Validation { field, .. }) => assert_eq!(field, "subject_id"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    proptest! {
        #[test]
        fn purpose_accepts_exactly_the_pattern(s in "\\PC{0,70}") {
            let mut chars = s.chars();
            let expected = (1..=64).contains(&s.chars().count())
                && chars.next().is_some_and(|c| matches!(c, 'a'..='z' | '0'..='9'))
                && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'));
            prop_assert_eq!(Purpose::parse(&s).is_ok(), expected);
        }

        #[test]
        fn valid_purposes_round_trip(s in "[a-z0-9][a-z0-9_.-]{0,63}") {
            let p = Purpose::parse(&s).unwrap();
            prop_assert_eq!(p.as_str(), s.as_str());
        }
    }

    #[test]
    fn expiry_must_be_rfc3339_and_future() {
        assert_eq!(validate_expires_at(None, NOW).unwrap(), None);
        assert_eq!(
            validate_expires_at(Some("2026-01-31T10:15:00+01:00"), NOW).ok(),
            None,
            "exactly now is not in the future"
        );
        assert_eq!(
            validate_expires_at(Some("2026-02-01T00:00:00Z"), NOW).unwrap(),
            Some(datetime!(2026-02-01 00:00:00 UTC))
        );
        for bad in ["tomorrow", "2026-02-01", "2020-01-01T00:00:00Z"] {
            match validate_expires_at(Some(bad), NOW) {
                Err(ConsentError::Validation { field, .. }) => assert_eq!(field, "expires_at"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn metadata_must_be_storable() {
        for bad in [
            json!({"a": "\u{0}"}),
            json!({"\u{0}": 1}),
            json!({"a": [{"b": "x\u{0}"}]}),
        ] {
            assert!(matches!(
                validate_metadata(Some(bad)),
                Err(ConsentError::Validation {
                    field: "metadata",
                    ..
                })
            ));
        }
        assert!(SubjectId::parse("u\u{0}").is_err());
        assert!(Purpose::parse("p\u{0}").is_err());
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert_eq!(validate_metadata(None).unwrap(), json!({}));
        assert_eq!(validate_metadata(Some(Value::Null)).unwrap(), json!({}));
        assert_eq!(
            validate_metadata(Some(json!({"source": "signup"}))).unwrap(),
            json!({"source": "signup"})
        );
        for bad in [json!([1]), json!("x"), json!(3)] {
            assert!(validate_metadata(Some(bad)).is_err());
        }
    }

    fn record() -> ConsentRecord {
        ConsentRecord {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            subject_id: SubjectId::parse("user-1").unwrap(),
            purpose: Purpose::parse("marketing").unwrap(),
            granted: true,
            granted_at: datetime!(2026-01-31 09:15:00.123456 UTC),
            revoked_at: None,
            expires_at: None,
            metadata: json!({}),
            created_at: NOW,
            updated_at: NOW,
            version: 1,
        }
    }

    #[test]
    fn activity() {
        let r = record();
        assert!(r.is_active_at(NOW));
        let expiring = ConsentRecord {
            expires_at: Some(NOW),
            ..r.clone()
        };
        assert!(expiring.is_active_at(NOW - time::Duration::milliseconds(1)));
        assert!(!expiring.is_active_at(NOW), "expired at its expiry instant");
        let revoked = ConsentRecord {
            granted: false,
            revoked_at: Some(NOW),
            ..r
        };
        assert!(!revoked.is_active_at(NOW));
    }

    #[test]
    fn serializes_the_wire_shape() {
        let r = record();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["subject_id"], "user-1");
        assert_eq!(v["purpose"], "marketing");
        assert_eq!(v["granted_at"], "2026-01-31T09:15:00.123Z");
        assert_eq!(v["revoked_at"], Value::Null);
        assert_eq!(v["expires_at"], Value::Null);
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "created_at",
                "expires_at",
                "granted",
                "granted_at",
                "id",
                "metadata",
                "purpose",
                "revoked_at",
                "subject_id",
                "tenant_id",
                "updated_at"
            ]
        );
    }
}
