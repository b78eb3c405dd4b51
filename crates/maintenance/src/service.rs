//! The maintenance use cases.

use std::sync::Arc;

use serde_json::json;
use stratum_core::{Caller, Clock};
use stratum_crypto::{envelope_key_id, EncryptionKey, Keyring, SharedKeyring};
use time::Duration;

use crate::model::*;
use crate::ports::*;
use crate::MaintenanceError;

type Result<T> = std::result::Result<T, MaintenanceError>;

/// Retention purge, key rotation and the start-up key check.
pub struct MaintenanceService {
    store: Arc<dyn MaintenanceStore>,
    keyring: SharedKeyring,
    clock: Arc<dyn Clock>,
    retention: RetentionConfig,
}

/// True when `candidate` is the very key `current` (not merely one with the same short
/// id): it opens a value `current` has just sealed.
fn same_key(candidate: &EncryptionKey, current: &EncryptionKey) -> bool {
    candidate.key_id() == current.key_id()
        && current
            .encrypt(b"stratum key check")
            .and_then(|probe| candidate.decrypt(&probe))
            .is_ok()
}

impl MaintenanceService {
    /// Wires the service. `keyring` is the process's own: a rotation swaps it.
    pub fn new(
        store: Arc<dyn MaintenanceStore>,
        keyring: SharedKeyring,
        clock: Arc<dyn Clock>,
        retention: RetentionConfig,
    ) -> Self {
        Self {
            store,
            keyring,
            clock,
            retention,
        }
    }

    /// Deletes what is older than the windows: finished deliveries, unreferenced events
    /// and ended consent records older than `retention_days` (default from the
    /// configuration), audit entries older than the audit window. Journaled.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use stratum_core::{Caller, SystemClock};
    /// use stratum_crypto::{Keyring, SharedKeyring};
    /// use stratum_maintenance::{
    ///     MaintenanceError, MaintenanceService, MockMaintenanceStore, PurgeCounts, RetentionConfig,
    /// };
    ///
    /// let mut store = MockMaintenanceStore::new();
    /// store.expect_purge().times(1).returning(|cutoffs, journal| {
    ///     // The audit window (365 days by default) reaches further back than 30 days.
    ///     assert!(cutoffs.audit_before < cutoffs.deliveries_and_events_before);
    ///     assert_eq!(journal.action, "maintenance.purge_expired");
    ///     Ok(PurgeCounts { deliveries: 12, events: 3, audit_logs: 0, consent_records: 1 })
    /// });
    /// let keyring = SharedKeyring::new(
    ///     Keyring::from_env_values("an-example-master-key-of-some-length", None).unwrap(),
    /// );
    /// let service = MaintenanceService::new(
    ///     Arc::new(store),
    ///     keyring,
    ///     Arc::new(SystemClock),
    ///     RetentionConfig::default(),
    /// );
    /// let counts = service.purge_expired(&Caller::system(), Some(30)).await.unwrap();
    /// assert_eq!(counts.deleted_count(), 16);
    /// // A window outside 1..=3650 days is refused before the store is asked.
    /// let refused = service.purge_expired(&Caller::system(), Some(0)).await;
    /// assert!(matches!(refused, Err(MaintenanceError::Validation { .. })));
    /// # });
    /// ```
    pub async fn purge_expired(
        &self,
        caller: &Caller,
        retention_days: Option<i64>,
    ) -> Result<PurgeCounts> {
        caller.require_global_admin()?;
        let days = retention_days.unwrap_or(self.retention.retention_days);
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&days) {
            return Err(MaintenanceError::invalid(
                "retention_days",
                format!("must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}"),
            ));
        }
        let audit_days = self.retention.audit_retention_days;
        let now = self.clock.now();
        let window = now - Duration::days(days);
        let cutoffs = PurgeCutoffs {
            deliveries_and_events_before: window,
            audit_before: now - Duration::days(audit_days),
            consent_before: window,
        };
        let journal = caller
            .journal("maintenance.purge_expired", "maintenance")
            .after(Some(json!({
                "retention_days": days,
                "audit_retention_days": audit_days,
            })));
        let counts = self.store.purge(cutoffs, journal).await?;
        tracing::info!(
            retention_days = days,
            audit_retention_days = audit_days,
            deliveries = counts.deliveries,
            events = counts.events,
            audit_logs = counts.audit_logs,
            consent_records = counts.consent_records,
            "purged expired data"
        );
        Ok(counts)
    }

    /// Re-encrypts every stored secret from `old_key` (which must be the key in use) to
    /// `new_key` in one transaction, then makes this process use `new_key` at once (the
    /// old one stays readable as the previous key). Journaled with key ids only.
    pub async fn rotate_encryption_key(
        &self,
        caller: &Caller,
        old_key: &str,
        new_key: &str,
    ) -> Result<RotationCounts> {
        caller.require_global_admin()?;
        if new_key.chars().count() < MIN_NEW_KEY_CHARS {
            return Err(MaintenanceError::invalid(
                "new_key",
                format!("must be at least {MIN_NEW_KEY_CHARS} characters"),
            ));
        }
        if new_key == old_key {
            return Err(MaintenanceError::invalid(
                "new_key",
                "must differ from old_key",
            ));
        }
        let ring = self.keyring.get();
        let old = EncryptionKey::derive(old_key)
            .ok()
            // One of this process's keys (not merely one with the same short id). Whether
            // it is the database's active key the store decides, atomically with the change.
            .filter(|k| ring.key(k.key_id()).is_some_and(|held| same_key(k, held)))
            .ok_or(MaintenanceError::InvalidOldKey)?;
        let new = EncryptionKey::derive(new_key)
            .map_err(|e| MaintenanceError::invalid("new_key", e.to_string()))?;
        if new.key_id() == old.key_id() {
            return Err(MaintenanceError::invalid(
                "new_key",
                "has the same key id as old_key; choose another key",
            ));
        }

        let journal = caller
            .journal("maintenance.rotate_encryption_key", "encryption_key")
            .resource(new.key_id())
            .after(Some(json!({
                "old_key_id": old.key_id(),
                "new_key_id": new.key_id(),
            })));
        // Values are read by the key they name: old_key, or one this process holds
        // (written before the database recorded its active key).
        let source = Keyring::with_keys(old.clone(), ring.keys().cloned());
        let target = new.clone();
        let target_id = new.key_id().to_owned();
        let reencrypt: Reencrypt = Box::new(move |stored: &str| {
            if envelope_key_id(stored) == Some(target_id.as_str()) {
                return Ok(stored.to_owned());
            }
            let plain = source.decrypt(stored).map_err(|e| e.to_string())?;
            target.encrypt(&plain).map_err(|e| e.to_string())
        });
        // Writers of secrets in this process that find the new key active between the
        // commit and the switch below must be able to seal with it: readable from now on.
        let held_before = ring.holds(new.key_id());
        self.keyring.update(|r| r.with_readable(new.clone()));
        // The store decides, inside its transaction, whether old_key is the active key and
        // whether another rotation runs: the checks and the change are one atomic step.
        let rotated = self
            .store
            .rotate(
                old.key_id().to_owned(),
                new.key_id().to_owned(),
                reencrypt,
                journal,
            )
            .await;
        let counts = match rotated {
            Ok(counts) => counts,
            Err(e) => {
                if !held_before {
                    self.keyring.update(|r| r.without(new.key_id()));
                }
                return Err(e);
            }
        };
        self.keyring.update(|now| {
            Keyring::with_keys(
                new.clone(),
                now.keys().cloned().chain(std::iter::once(old.clone())),
            )
        });
        tracing::info!(
            old_key_id = %old.key_id(),
            new_key_id = %new.key_id(),
            config_entries = counts.config_entries,
            webhooks = counts.webhooks,
            "encryption key rotated; this process now encrypts with the new key. Set STRATUM_ENCRYPTION_KEY to it before the next restart"
        );
        Ok(counts)
    }

    /// At start-up, after [`check_keys`](Self::check_keys): reads the database's active key
    /// (recording one on first start: the key every stored envelope names, else this
    /// process's key) and makes this process encrypt with it when it holds it. When it
    /// does not, writes of secrets answer `KeyUnavailable` until it is restarted with it.
    pub async fn init_active_key(&self) -> std::result::Result<String, String> {
        let ring = self.keyring.get();
        let stored = self
            .store
            .stored_key_ids()
            .await
            .map_err(|e| format!("cannot read the key ids of the stored secrets: {e}"))?;
        let candidate = match stored.as_slice() {
            [only] => only.clone(),
            _ => ring.current().key_id().to_owned(),
        };
        let active = self
            .store
            .init_active_key_id(candidate)
            .await
            .map_err(|e| format!("cannot read the active encryption key id: {e}"))?;
        if self.keyring.adopt(&active) {
            tracing::info!(active_key_id = %active, "encrypting new secrets with the active key");
        } else {
            tracing::warn!(
                active_key_id = %active,
                current_key_id = %ring.current().key_id(),
                "this process does not hold the database's active encryption key: writes of secrets answer 503 ENCRYPTION_KEY_UNAVAILABLE until it is restarted with it"
            );
        }
        Ok(active)
    }

    /// Checks at start-up that `keyring` can read every stored envelope: each stored key id
    /// must be one of its keys. The error says what to do.
    pub async fn check_keys(&self, keyring: &Keyring) -> std::result::Result<(), String> {
        let stored = self
            .store
            .stored_key_ids()
            .await
            .map_err(|e| format!("cannot read the key ids of the stored secrets: {e}"))?;
        let current = keyring.current().key_id();
        let mut unknown: Vec<&str> = stored
            .iter()
            .map(String::as_str)
            .filter(|id| !keyring.holds(id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        unknown.dedup();
        let others: Vec<&str> = keyring.keys().skip(1).map(EncryptionKey::key_id).collect();
        Err(format!(
            "the stored secrets are encrypted under key id(s) {}, but STRATUM_ENCRYPTION_KEY has key id {current}{}. \
             Set STRATUM_ENCRYPTION_KEY to the key in use (after a rotation: the new key), or, during a rolling \
             rotation, set STRATUM_ENCRYPTION_KEY_PREVIOUS (the old key) or STRATUM_ENCRYPTION_KEY_NEXT (the new key) \
             so both can be read",
            unknown.join(", "),
            if others.is_empty() {
                " and neither STRATUM_ENCRYPTION_KEY_PREVIOUS nor STRATUM_ENCRYPTION_KEY_NEXT is set".to_owned()
            } else {
                format!(" and the other configured keys have key id(s) {}", others.join(", "))
            }
        ))
    }
}
