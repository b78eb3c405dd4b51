//! Permission policies on PostgreSQL.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use stratum_core::{Journal, StoreError};
use stratum_tenancy::{PermissionMode, PermissionPolicy, PermissionStore, TenancyError};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{fail, lock_active, stale_or};
use crate::cached::CachedExt;
use crate::error::{is_unique_violation, map_query_error};
use crate::in_tx;
use crate::journal::record;
use crate::schema::permission_policies;
use crate::tx::{read_conn, TxError};
use crate::Pool;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = permission_policies)]
struct PermissionRow {
    id: Uuid,
    tenant_id: Uuid,
    key: String,
    value: Value,
    mode: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    version: i64,
}

impl PermissionRow {
    fn into_domain(self) -> PermissionPolicy {
        PermissionPolicy {
            id: self.id,
            tenant_id: self.tenant_id,
            key: self.key,
            value: self.value,
            mode: PermissionMode::parse(&self.mode).unwrap_or(PermissionMode::Inherited),
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }
}

/// Permission policies on PostgreSQL.
#[derive(Clone)]
pub struct PgPermissionStore {
    pool: Pool,
}

impl PgPermissionStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl PermissionStore for PgPermissionStore {
    async fn list(&self, tenant_id: Uuid) -> Result<Vec<PermissionPolicy>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows: Vec<PermissionRow> = permission_policies::table
            .filter(permission_policies::tenant_id.eq(tenant_id))
            .order(permission_policies::key.asc())
            .select(PermissionRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(rows.into_iter().map(PermissionRow::into_domain).collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<PermissionPolicy>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<PermissionRow> = permission_policies::table
            .find(id)
            .select(PermissionRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(PermissionRow::into_domain))
    }

    async fn create(&self, p: PermissionPolicy, journal: Journal) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            if lock_active(conn, p.tenant_id, false).await?.is_none() {
                return fail(TenancyError::TenantNotFound);
            }
            let row = PermissionRow {
                id: p.id,
                tenant_id: p.tenant_id,
                key: p.key.clone(),
                value: p.value.clone(),
                mode: p.mode.as_str().to_owned(),
                created_at: p.created_at,
                updated_at: p.updated_at,
                version: 1,
            };
            diesel::insert_into(permission_policies::table)
                .values(&row)
                .execute(conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        TxError::Domain(TenancyError::Conflict(format!(
                            "permission '{}' already exists on this tenant",
                            p.key
                        )))
                    } else {
                        TxError::Db(e)
                    }
                })?;
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn update(
        &self,
        p: PermissionPolicy,
        expected: i64,
        journal: Journal,
    ) -> Result<i64, TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            let written: Option<i64> = diesel::update(
                permission_policies::table
                    .find(p.id)
                    .filter(permission_policies::version.eq(expected)),
            )
            .set((
                permission_policies::value.eq(&p.value),
                permission_policies::mode.eq(p.mode.as_str()),
                permission_policies::updated_at.eq(p.updated_at),
                permission_policies::version.eq(permission_policies::version + 1),
            ))
            .returning(permission_policies::version)
            .cached()
            .get_result(conn)
            .await
            .optional()?;
            let Some(version) = written else {
                let exists = permission_exists(conn, p.id).await?;
                return stale_or(exists, TenancyError::PermissionNotFound);
            };
            record(conn, &journal).await?;
            Ok(version)
        })
    }

    async fn delete(&self, id: Uuid, expected: i64, journal: Journal) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            let n = diesel::delete(
                permission_policies::table
                    .find(id)
                    .filter(permission_policies::version.eq(expected)),
            )
            .execute(conn)
            .await?;
            if n == 0 {
                let exists = permission_exists(conn, id).await?;
                return stale_or(exists, TenancyError::PermissionNotFound);
            }
            record(conn, &journal).await?;
            Ok(())
        })
    }
}

async fn permission_exists(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(permission_policies::table.find(id)))
        .get_result(conn)
        .await
}
