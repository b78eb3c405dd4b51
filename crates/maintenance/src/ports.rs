//! The port maintenance needs. Each mutating method takes the [`Journal`] to commit in the
//! same transaction as its change.

use async_trait::async_trait;
use stratum_core::{Journal, StoreError};

use crate::{MaintenanceError, PurgeCounts, PurgeCutoffs, RotationCounts};

/// Turns one stored envelope into its replacement: the re-encrypted value, the same value
/// when it needs no change, or why it cannot be re-encrypted (no key material in the text).
pub type Reencrypt = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Bulk maintenance over the stored data.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Deletes, in one transaction and in bounded batches: finished deliveries completed
    /// before `deliveries_and_events_before` (with their attempts), then events created
    /// before it that no remaining delivery references, audit entries created before
    /// `audit_before`, and consent records revoked or expired before `consent_before`.
    /// Records `counts.complete(journal)` last, in the same transaction.
    async fn purge(
        &self,
        cutoffs: PurgeCutoffs,
        journal: Journal,
    ) -> Result<PurgeCounts, StoreError>;

    /// The rotation from `old_key_id` to `new_key_id`, linearizable: in one transaction,
    /// `RotationInProgress` when another rotation runs (nothing waits); then it waits for
    /// the writers of secrets in flight and holds new ones off until it ends;
    /// `InvalidOldKey` unless the database's active key id is `old_key_id` (recorded as
    /// such when none is yet); then re-encrypts every sensitive config value and every
    /// webhook secret through `reencrypt`, records `new_key_id` as the active key and
    /// `counts.complete(journal)`. Values `reencrypt` returns unchanged are not written
    /// nor counted. The first value it refuses aborts everything: `Reencrypt` naming the
    /// row, nothing changed.
    async fn rotate(
        &self,
        old_key_id: String,
        new_key_id: String,
        reencrypt: Reencrypt,
        journal: Journal,
    ) -> Result<RotationCounts, MaintenanceError>;

    /// The database's active key id: the recorded one, or else `candidate`, which is
    /// recorded (first start).
    async fn init_active_key_id(&self, candidate: String) -> Result<String, StoreError>;

    /// The distinct key ids of every stored envelope (sensitive config values and webhook
    /// secrets); values that are not envelopes are ignored.
    async fn stored_key_ids(&self) -> Result<Vec<String>, StoreError>;
}
