//! Config entries on PostgreSQL.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use stratum_core::{Journal, StoreError};
use stratum_tenancy::{ConfigStore, StoredConfigEntry, StoredValue, TenancyError};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{fail, lock_active, stale_or};
use crate::cached::CachedExt;
use crate::error::map_query_error;
use crate::in_tx;
use crate::journal::record;
use crate::schema::config_entries;
use crate::tx::read_conn;
use crate::Pool;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = config_entries)]
struct ConfigRow {
    tenant_id: Uuid,
    key: String,
    value: Option<Value>,
    encrypted_value: Option<String>,
    locked: bool,
    sensitive: bool,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    version: i64,
}

impl ConfigRow {
    fn into_domain(self) -> StoredConfigEntry {
        let value = match (self.sensitive, self.encrypted_value, self.value) {
            (true, Some(c), _) => StoredValue::Encrypted(c),
            (_, _, v) => StoredValue::Plain(v.unwrap_or(Value::Null)),
        };
        StoredConfigEntry {
            tenant_id: self.tenant_id,
            key: self.key,
            value,
            locked: self.locked,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }

    fn from_domain(e: &StoredConfigEntry) -> Self {
        let (value, encrypted_value, sensitive) = match &e.value {
            StoredValue::Plain(v) => (Some(v.clone()), None, false),
            StoredValue::Encrypted(c) => (None, Some(c.clone()), true),
        };
        Self {
            tenant_id: e.tenant_id,
            key: e.key.clone(),
            value,
            encrypted_value,
            locked: e.locked,
            sensitive,
            created_at: e.created_at,
            updated_at: e.updated_at,
            version: e.version,
        }
    }
}

/// Config entries on PostgreSQL.
#[derive(Clone)]
pub struct PgConfigStore {
    pool: Pool,
}

impl PgConfigStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ConfigStore for PgConfigStore {
    async fn entries_for(
        &self,
        tenant_ids: Vec<Uuid>,
    ) -> Result<Vec<StoredConfigEntry>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows: Vec<ConfigRow> = config_entries::table
            .filter(config_entries::tenant_id.eq_any(tenant_ids))
            .select(ConfigRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(rows.into_iter().map(ConfigRow::into_domain).collect())
    }

    async fn put(
        &self,
        entry: StoredConfigEntry,
        expected: Option<i64>,
        ancestors: Vec<Uuid>,
        journal: Journal,
    ) -> Result<StoredConfigEntry, TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            if let StoredValue::Encrypted(c) = &entry.value {
                crate::keys::ensure_active_key(conn, c).await?;
            }
            if lock_active(conn, entry.tenant_id, false).await?.is_none() {
                return fail(TenancyError::TenantNotFound);
            }
            let locked_above: i64 = config_entries::table
                .filter(config_entries::tenant_id.eq_any(&ancestors))
                .filter(config_entries::key.eq(&entry.key))
                .filter(config_entries::locked.eq(true))
                .count()
                .get_result(conn)
                .await?;
            if locked_above > 0 {
                return fail(TenancyError::ConfigLocked(entry.key.clone()));
            }
            let mut row = ConfigRow::from_domain(&entry);
            // Insert only where the service saw no entry; replace only the version it read.
            let written: Option<(OffsetDateTime, i64)> = match expected {
                None => {
                    row.version = 1;
                    diesel::insert_into(config_entries::table)
                        .values(&row)
                        .on_conflict_do_nothing()
                        .returning((config_entries::created_at, config_entries::version))
                        .cached()
                        .get_result(conn)
                        .await
                        .optional()?
                }
                Some(v) => diesel::update(
                    config_entries::table
                        .find((entry.tenant_id, &entry.key))
                        .filter(config_entries::version.eq(v)),
                )
                .set((
                    config_entries::value.eq(&row.value),
                    config_entries::encrypted_value.eq(&row.encrypted_value),
                    config_entries::locked.eq(row.locked),
                    config_entries::sensitive.eq(row.sensitive),
                    config_entries::updated_at.eq(row.updated_at),
                    config_entries::version.eq(config_entries::version + 1),
                ))
                .returning((config_entries::created_at, config_entries::version))
                .cached()
                .get_result(conn)
                .await
                .optional()?,
            };
            let Some((created_at, version)) = written else {
                return fail(TenancyError::Stale);
            };
            record(conn, &journal).await?;
            Ok(StoredConfigEntry {
                created_at,
                version,
                ..entry
            })
        })
    }

    async fn delete(
        &self,
        tenant_id: Uuid,
        key: String,
        expected: i64,
        journal: Journal,
    ) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            let n = diesel::delete(
                config_entries::table
                    .find((tenant_id, &key))
                    .filter(config_entries::version.eq(expected)),
            )
            .execute(conn)
            .await?;
            if n == 0 {
                let exists: bool = diesel::select(diesel::dsl::exists(
                    config_entries::table.find((tenant_id, &key)),
                ))
                .get_result(conn)
                .await?;
                return stale_or(exists, TenancyError::ConfigNotFound);
            }
            record(conn, &journal).await?;
            Ok(())
        })
    }
}
