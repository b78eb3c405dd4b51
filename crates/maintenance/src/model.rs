//! What the maintenance operations take and return.

use serde::Serialize;
use serde_json::{Map, Value};
use stratum_core::Journal;
use time::OffsetDateTime;

/// The shortest retention window `purge-expired` accepts, in days.
pub const MIN_RETENTION_DAYS: i64 = 1;
/// The longest retention window `purge-expired` accepts, in days.
pub const MAX_RETENTION_DAYS: i64 = 3650;
/// The shortest new master key `rotate-encryption-key` accepts, in characters.
pub const MIN_NEW_KEY_CHARS: usize = 32;

/// The purge windows, from the configuration (`STRATUM_RETENTION_DAYS`,
/// `STRATUM_AUDIT_RETENTION_DAYS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Default window for deliveries, events and consent records, in days.
    pub retention_days: i64,
    /// Window for audit entries, in days.
    pub audit_retention_days: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            audit_retention_days: 365,
        }
    }
}

/// What is old enough to go: everything strictly before these instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeCutoffs {
    /// Finished deliveries (by `completed_at`) and unreferenced events (by `created_at`).
    pub deliveries_and_events_before: OffsetDateTime,
    /// Audit entries (by `created_at`).
    pub audit_before: OffsetDateTime,
    /// Consent records revoked or expired before this.
    pub consent_before: OffsetDateTime,
}

/// How many rows a purge deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeCounts {
    /// Finished deliveries (their attempts go with them).
    pub deliveries: u64,
    /// Events no delivery references any more.
    pub events: u64,
    /// Audit entries.
    pub audit_logs: u64,
    /// Revoked or expired consent records.
    pub consent_records: u64,
}

impl PurgeCounts {
    /// All rows deleted.
    pub fn deleted_count(&self) -> u64 {
        self.deliveries + self.events + self.audit_logs + self.consent_records
    }

    /// The journal entry of the purge with these counts added to its `after` state: the
    /// adapter calls this once it knows them, just before recording it.
    pub fn complete(&self, journal: Journal) -> Journal {
        with_fields(
            journal,
            [
                ("deleted_count", self.deleted_count()),
                ("deliveries", self.deliveries),
                ("events", self.events),
                ("audit_logs", self.audit_logs),
                ("consent_records", self.consent_records),
            ],
        )
    }
}

/// How many stored values a key rotation re-encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RotationCounts {
    /// Sensitive config values.
    pub config_entries: u64,
    /// Webhook secrets.
    pub webhooks: u64,
}

impl RotationCounts {
    /// The journal entry of the rotation with these counts added to its `after` state.
    pub fn complete(&self, journal: Journal) -> Journal {
        with_fields(
            journal,
            [
                ("config_entries_rotated", self.config_entries),
                ("webhooks_rotated", self.webhooks),
            ],
        )
    }
}

fn with_fields<const N: usize>(mut journal: Journal, fields: [(&str, u64); N]) -> Journal {
    let mut after = match journal.after.take() {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in fields {
        after.insert(k.to_owned(), Value::from(v));
    }
    journal.after = Some(Value::Object(after));
    journal
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stratum_core::Caller;

    use super::*;

    #[test]
    fn purge_counts_complete_the_journal() {
        let j = Caller::system()
            .journal("maintenance.purge_expired", "maintenance")
            .after(Some(json!({"retention_days": 30})));
        let c = PurgeCounts {
            deliveries: 3,
            events: 2,
            audit_logs: 1,
            consent_records: 4,
        };
        assert_eq!(c.deleted_count(), 10);
        assert_eq!(
            c.complete(j).after,
            Some(json!({
                "retention_days": 30, "deleted_count": 10, "deliveries": 3, "events": 2,
                "audit_logs": 1, "consent_records": 4
            }))
        );
    }

    #[test]
    fn rotation_counts_complete_an_empty_journal() {
        let j = Caller::system().journal("maintenance.rotate_encryption_key", "encryption_key");
        let c = RotationCounts {
            config_entries: 5,
            webhooks: 6,
        };
        assert_eq!(
            c.complete(j).after,
            Some(json!({"config_entries_rotated": 5, "webhooks_rotated": 6}))
        );
    }
}
