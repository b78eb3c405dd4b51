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

    /// Re-encrypts every sensitive config value and every webhook secret through
    /// `reencrypt`, in one transaction that also keeps them from changing meanwhile, and
    /// records `counts.complete(journal)`. Values `reencrypt` returns unchanged are not
    /// written nor counted. The first value it refuses aborts everything: `Reencrypt`
    /// naming the row, nothing changed.
    async fn rotate(
        &self,
        reencrypt: Reencrypt,
        journal: Journal,
    ) -> Result<RotationCounts, MaintenanceError>;

    /// The distinct key ids of every stored envelope (sensitive config values and webhook
    /// secrets); values that are not envelopes are ignored.
    async fn stored_key_ids(&self) -> Result<Vec<String>, StoreError>;
}
