//! API keys on PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use stratum_core::{Journal, Scope, StoreError, TenantPath};
use stratum_tenancy::{ApiKey, ApiKeyStore, KeyPrincipal, TenancyError};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{fail, lock_active};
use crate::error::map_query_error;
use crate::in_tx;
use crate::journal::record;
use crate::schema::{api_keys, tenants};
use crate::tx::read_conn;
use crate::Pool;

#[derive(Queryable, Selectable)]
#[diesel(table_name = api_keys)]
struct ApiKeyRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    name: Option<String>,
    key_prefix: String,
    scopes: Vec<Option<String>>,
    created_at: OffsetDateTime,
    last_used_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
}

impl ApiKeyRow {
    fn into_domain(self) -> ApiKey {
        let mut scopes: Vec<Scope> = self
            .scopes
            .iter()
            .flatten()
            .filter_map(|s| Scope::parse(s))
            .collect();
        scopes.sort();
        ApiKey {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            key_prefix: self.key_prefix,
            scopes,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// How often one key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// API keys on PostgreSQL.
#[derive(Clone)]
pub struct PgApiKeyStore {
    pool: Pool,
    touched: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl PgApiKeyStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            touched: Arc::default(),
        }
    }
}

#[async_trait]
impl ApiKeyStore for PgApiKeyStore {
    async fn find_by_hash(&self, key_hash: String) -> Result<Option<KeyPrincipal>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<(ApiKeyRow, Option<String>, Option<String>)> = api_keys::table
            .left_join(tenants::table)
            .filter(api_keys::key_hash.eq(key_hash))
            .filter(api_keys::revoked_at.is_null())
            .select((
                ApiKeyRow::as_select(),
                tenants::ancestry_path.nullable(),
                tenants::status.nullable(),
            ))
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(|(k, path, status)| KeyPrincipal {
            key: k.into_domain(),
            // A key bound to an archived tenant has no tenant to see.
            tenant_path: path
                .filter(|_| status.as_deref() == Some(crate::status::TENANT_ACTIVE))
                .and_then(|p| TenantPath::parse(&p)),
        }))
    }

    async fn touch(&self, id: Uuid) -> Result<(), StoreError> {
        {
            let mut touched = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if touched
                .get(&id)
                .is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY)
            {
                return Ok(());
            }
            if touched.len() > 10_000 {
                touched.retain(|_, t| now.duration_since(*t) < TOUCH_EVERY);
            }
            touched.insert(id, now);
        }
        let pool = self.pool.clone();
        // Off the request path: a lost touch costs nothing.
        tokio::spawn(async move {
            let Ok(mut conn) = pool.get().await else {
                return;
            };
            let result = diesel::update(api_keys::table.find(id))
                .set(api_keys::last_used_at.eq(diesel::dsl::now))
                .execute(&mut conn)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "could not record api key use");
            }
        });
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<ApiKeyRow> = api_keys::table
            .find(id)
            .select(ApiKeyRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(ApiKeyRow::into_domain))
    }

    async fn list(&self, tenant_id: Option<Uuid>) -> Result<Vec<ApiKey>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = api_keys::table.into_boxed();
        if let Some(t) = tenant_id {
            q = q.filter(api_keys::tenant_id.eq(t));
        }
        let rows: Vec<ApiKeyRow> = q
            .order((api_keys::created_at.desc(), api_keys::id.desc()))
            .select(ApiKeyRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(rows.into_iter().map(ApiKeyRow::into_domain).collect())
    }

    async fn create(
        &self,
        key: ApiKey,
        key_hash: String,
        journal: Journal,
    ) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            if let Some(t) = key.tenant_id {
                if lock_active(conn, t, false).await?.is_none() {
                    return fail(TenancyError::TenantNotFound);
                }
            }
            let scopes: Vec<String> = key.scopes.iter().map(|s| s.as_str().to_owned()).collect();
            diesel::insert_into(api_keys::table)
                .values((
                    api_keys::id.eq(key.id),
                    api_keys::tenant_id.eq(key.tenant_id),
                    api_keys::name.eq(&key.name),
                    api_keys::key_hash.eq(&key_hash),
                    api_keys::key_prefix.eq(&key.key_prefix),
                    api_keys::scopes.eq(scopes.into_iter().map(Some).collect::<Vec<_>>()),
                    api_keys::created_at.eq(key.created_at),
                ))
                .execute(conn)
                .await?;
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn revoke(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            let n = diesel::update(
                api_keys::table
                    .find(id)
                    .filter(api_keys::revoked_at.is_null()),
            )
            .set(api_keys::revoked_at.eq(Some(at)))
            .execute(conn)
            .await?;
            if n == 0 {
                return fail(TenancyError::ApiKeyNotFound);
            }
            record(conn, &journal).await?;
            Ok(())
        })
    }
}
