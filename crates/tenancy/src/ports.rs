//! The ports tenancy needs. Every mutating method takes the [`Journal`] to commit in the
//! same transaction as the change.

use async_trait::async_trait;
use stratum_core::{Journal, Limit, StoreError, TenantPath};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ApiKey, KeyPrincipal, PermissionPolicy, StoredConfigEntry, TenancyError, Tenant};

/// A change computed from a tenant's committed state, under its row lock: the new state and
/// its journal, `None` for no change, or why the change is refused.
pub type TenantChange =
    Box<dyn FnOnce(&Tenant) -> Result<Option<(Tenant, Journal)>, TenancyError> + Send>;

/// Tenants.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// The tenant, archived or not; `None` when unknown.
    async fn get(&self, id: Uuid) -> Result<Option<Tenant>, StoreError>;

    /// Active tenants with these ids.
    async fn get_many(&self, ids: Vec<Uuid>) -> Result<Vec<Tenant>, StoreError>;

    /// Active tenants within `subtree` (all when `None`), by id ascending, after `after`;
    /// at most [`limit.fetch()`](Limit::fetch) of them.
    async fn list(
        &self,
        subtree: Option<TenantPath>,
        after: Option<Uuid>,
        limit: Limit,
    ) -> Result<Vec<Tenant>, StoreError>;

    /// Active children of `id`.
    async fn children(&self, id: Uuid) -> Result<Vec<Tenant>, StoreError>;

    /// Active tenants strictly below `path`, shallowest first.
    async fn descendants(&self, path: TenantPath) -> Result<Vec<Tenant>, StoreError>;

    /// Inserts `tenant`. `TenantNotFound` when its parent is gone or archived (or moved:
    /// the parent's path must still be the one `tenant.ancestry_path` was built from);
    /// `Conflict` when the slug is taken.
    async fn create(&self, tenant: Tenant, journal: Journal) -> Result<(), TenancyError>;

    /// Locks the active tenant `id` and hands its committed state to `change`, inside one
    /// transaction; when `change` returns a new state, writes its name, slug, metadata and
    /// `updated_at` (bumping the version) and its journal in that transaction. Returns the
    /// tenant as committed (the current one when `change` returned `None`).
    /// `TenantNotFound` when not active; `Conflict` when the slug is taken; whatever
    /// `change` fails with (nothing is written then).
    async fn modify(&self, id: Uuid, change: TenantChange) -> Result<Tenant, TenancyError>;

    /// Archives `id` while its version is `expected`. `Stale` when it is not;
    /// `HasChildren` when it has active children; `TenantNotFound` when not active.
    async fn archive(
        &self,
        id: Uuid,
        expected: i64,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<(), TenancyError>;

    /// Moves the subtree at `from` (the tenant's current path) so that the tenant's path
    /// becomes `to`, rewriting every descendant's path and depth (and bumping each moved
    /// tenant's version) in one transaction. `Stale` when the tenant's version is not
    /// `expected`; `Conflict` when the new parent's path changed meanwhile;
    /// `CycleDetected` when `to` lies in the subtree; `TenantNotFound` when the new parent
    /// is gone. Returns the tenant's new version.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per fact the move checks"
    )]
    async fn move_subtree(
        &self,
        id: Uuid,
        expected: i64,
        new_parent: Uuid,
        from: TenantPath,
        to: TenantPath,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<i64, TenancyError>;
}

/// Config entries.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// Every entry stored on any of these tenants.
    async fn entries_for(
        &self,
        tenant_ids: Vec<Uuid>,
    ) -> Result<Vec<StoredConfigEntry>, StoreError>;

    /// Inserts the entry when `expected` is `None` and the tenant has no such key, or
    /// replaces it (keeping `created_at`, bumping the version) when its version is
    /// `expected`; `Stale` otherwise. `ConfigLocked` when one of `ancestors` has the key
    /// locked at commit time; `TenantNotFound` when the tenant is gone. Returns the entry
    /// as stored.
    async fn put(
        &self,
        entry: StoredConfigEntry,
        expected: Option<i64>,
        ancestors: Vec<Uuid>,
        journal: Journal,
    ) -> Result<StoredConfigEntry, TenancyError>;

    /// Removes the entry while its version is `expected`. `Stale` when it is another;
    /// `ConfigNotFound` when the tenant has no such key.
    async fn delete(
        &self,
        tenant_id: Uuid,
        key: String,
        expected: i64,
        journal: Journal,
    ) -> Result<(), TenancyError>;
}

/// Permission policies.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PermissionStore: Send + Sync {
    /// The tenant's policies, by key.
    async fn list(&self, tenant_id: Uuid) -> Result<Vec<PermissionPolicy>, StoreError>;

    /// One policy; `None` when unknown.
    async fn get(&self, id: Uuid) -> Result<Option<PermissionPolicy>, StoreError>;

    /// Inserts. `Conflict` when the tenant already has the key.
    async fn create(&self, policy: PermissionPolicy, journal: Journal) -> Result<(), TenancyError>;

    /// Writes value, mode and `updated_at` and bumps the version while it is `expected`.
    /// `Stale` when it is another; `PermissionNotFound` when gone. Returns the new version.
    async fn update(
        &self,
        policy: PermissionPolicy,
        expected: i64,
        journal: Journal,
    ) -> Result<i64, TenancyError>;

    /// Removes while the version is `expected`. `Stale` when it is another;
    /// `PermissionNotFound` when gone.
    async fn delete(&self, id: Uuid, expected: i64, journal: Journal) -> Result<(), TenancyError>;
}

/// API keys.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// The unrevoked key with this SHA-256 digest, with its tenant's path.
    async fn find_by_hash(&self, key_hash: String) -> Result<Option<KeyPrincipal>, StoreError>;

    /// Records use; cheap, and at most one write a minute per key.
    async fn touch(&self, id: Uuid) -> Result<(), StoreError>;

    /// One key; `None` when unknown.
    async fn get(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError>;

    /// Keys, newest first, optionally of one tenant.
    async fn list(&self, tenant_id: Option<Uuid>) -> Result<Vec<ApiKey>, StoreError>;

    /// Stores a new key by its digest. `TenantNotFound` when the tenant is gone.
    async fn create(
        &self,
        key: ApiKey,
        key_hash: String,
        journal: Journal,
    ) -> Result<(), TenancyError>;

    /// Revokes. `ApiKeyNotFound` when unknown or already revoked.
    async fn revoke(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<(), TenancyError>;
}
