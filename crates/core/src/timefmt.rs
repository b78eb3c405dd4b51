//! The wire format of timestamps: RFC 3339, UTC, millisecond precision.

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const MILLIS: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats `t` as `2026-01-31T09:15:00.123Z`.
pub fn format(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(MILLIS)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses any RFC 3339 timestamp (any offset) into UTC.
pub fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339).map(|t| t.to_offset(UtcOffset::UTC))
}

/// Serde adapter for `OffsetDateTime` fields.
pub mod rfc3339 {
    use super::*;

    /// Serializes in the wire format.
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    /// Deserializes any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw).map_err(|_| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }
}

/// Serde adapter for `Option<OffsetDateTime>` fields.
pub mod rfc3339_opt {
    use super::*;

    /// Serializes in the wire format, or null.
    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&format(*t)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes an RFC 3339 timestamp or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        raw.map(|r| {
            parse(&r).map_err(|_| serde::de::Error::custom("expected an RFC 3339 timestamp"))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_millis_in_utc() {
        let t = datetime!(2026-01-31 10:15:00.123456 +01:00);
        assert_eq!(format(t), "2026-01-31T09:15:00.123Z");
    }

    #[test]
    fn parses_offsets_into_utc() {
        let t = parse("2026-01-31T10:15:00+01:00").unwrap();
        assert_eq!(format(t), "2026-01-31T09:15:00.000Z");
        assert!(parse("yesterday").is_err());
    }
}
