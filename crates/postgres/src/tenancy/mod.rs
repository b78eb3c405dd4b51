//! Tenancy adapters, one module per aggregate of the `stratum-tenancy` crate: tenants,
//! config, permissions and API keys; the helpers they share are here.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_tenancy::TenancyError;
use uuid::Uuid;

use crate::schema;
use crate::status;
use crate::tx::TxError;

mod api_keys;
mod config;
mod permissions;
mod tenants;
mod write;

pub use api_keys::PgApiKeyStore;
pub use config::PgConfigStore;
pub use permissions::PgPermissionStore;
pub(crate) use tenants::slug_taken;
pub use tenants::PgTenantStore;

pub(crate) type TxResult<T> = Result<T, TxError<TenancyError>>;

pub(crate) fn fail<T>(e: TenancyError) -> TxResult<T> {
    Err(TxError::Domain(e))
}

/// Escapes LIKE wildcards (paths hold none, but a prefix must never be a pattern).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut s = prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    s.push('%');
    s
}

/// Locks an active tenant row (shared or exclusive) and returns its path and version;
/// `None` when gone or archived.
pub(crate) async fn lock_active_versioned(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    exclusive: bool,
) -> QueryResult<Option<(String, i64)>> {
    let q = schema::tenants::table
        .find(id)
        .filter(schema::tenants::status.eq(status::TENANT_ACTIVE))
        .select((schema::tenants::ancestry_path, schema::tenants::version));
    if exclusive {
        q.for_update().first(conn).await.optional()
    } else {
        q.for_share().first(conn).await.optional()
    }
}

/// Locks an active tenant row and returns its path; `None` when gone or archived.
pub(crate) async fn lock_active(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    exclusive: bool,
) -> QueryResult<Option<String>> {
    Ok(lock_active_versioned(conn, id, exclusive)
        .await?
        .map(|(path, _)| path))
}

/// After a conditional write matched no row: `Stale` when the row exists (so its version
/// was what differed), else `not_found`.
pub(crate) fn stale_or<T>(exists: bool, not_found: TenancyError) -> TxResult<T> {
    if exists {
        fail(TenancyError::Stale)
    } else {
        fail(not_found)
    }
}
