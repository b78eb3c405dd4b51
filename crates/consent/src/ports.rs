//! The port consent needs. Every mutating method takes the [`Journal`] to commit in the
//! same transaction as the change.

use async_trait::async_trait;
use stratum_core::{Journal, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ConsentError, ConsentFilter, ConsentRecord, Purpose, SubjectId};

/// Consent records.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// The record of (tenant, subject, purpose), active or not; `None` when there is none.
    async fn find(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
    ) -> Result<Option<ConsentRecord>, StoreError>;

    /// The tenant's records matching `filter`, newest first.
    async fn list(
        &self,
        tenant_id: Uuid,
        filter: ConsentFilter,
    ) -> Result<Vec<ConsentRecord>, StoreError>;

    /// Inserts `record`, or, when (tenant, subject, purpose) already has one, re-grants
    /// that one: writes `granted`, `granted_at`, `expires_at`, `metadata` and `updated_at`
    /// and clears `revoked_at`, keeping its `id` and `created_at`. Returns true when it
    /// inserted. Re-grants only while the stored version is `expected` (`None`: there must
    /// be no record yet) and bumps it. `TenantNotFound` when the tenant is not active;
    /// `Conflict` when a record with another id than `record.id` exists for the triple (a
    /// concurrent first grant) or its version is not `expected`.
    async fn upsert_grant(
        &self,
        record: ConsentRecord,
        expected: Option<i64>,
        journal: Journal,
    ) -> Result<bool, ConsentError>;

    /// Revokes the grant active at `at` (granted, not revoked, not expired) while its
    /// version is `expected`, and returns the record as revoked. `Conflict` when the active
    /// grant has another version; `NotFound` when there is no such grant.
    #[allow(
        clippy::too_many_arguments,
        reason = "the record's key plus what the write checks"
    )]
    async fn revoke(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
        expected: i64,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<ConsentRecord, ConsentError>;

    /// True when the subject's consent to `purpose` is active at `at`.
    async fn is_granted(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
}
