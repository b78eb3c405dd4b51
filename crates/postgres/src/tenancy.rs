//! Tenancy adapters: tenants, config, permissions, API keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use stratum_core::{Journal, Limit, Scope, StoreError, TenantPath};
use stratum_tenancy::{
    ApiKey, ApiKeyStore, ConfigStore, KeyPrincipal, PermissionMode, PermissionPolicy,
    PermissionStore, StoredConfigEntry, StoredValue, TenancyError, Tenant, TenantChange,
    TenantStore,
};
use time::OffsetDateTime;
use uuid::Uuid;

use futures_util::future::{try_join, try_join_all};
use stratum_audit::AuditRecord;
use tokio::sync::oneshot;

use crate::cached::CachedExt;
use crate::combine::Combiner;
use crate::error::{is_unique_violation, map_query_error};
use crate::in_tx;
use crate::journal::{self, record};
use crate::schema::{api_keys, config_entries, permission_policies, tenants};
use crate::status;
use crate::tx::{read_conn, TxError};
use crate::Pool;

type TxResult<T> = Result<T, TxError<TenancyError>>;

fn fail<T>(e: TenancyError) -> TxResult<T> {
    Err(TxError::Domain(e))
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
pub(crate) struct TenantRow {
    id: Uuid,
    parent_id: Option<Uuid>,
    name: String,
    slug: String,
    ancestry_path: String,
    depth: i32,
    metadata: Value,
    status: String,
    deleted_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    version: i64,
}

impl TenantRow {
    pub(crate) fn into_domain(self) -> Result<Tenant, StoreError> {
        let ancestry_path = TenantPath::parse(&self.ancestry_path).ok_or_else(|| {
            StoreError::internal(format!("tenant {} has a malformed path", self.id))
        })?;
        Ok(Tenant {
            id: self.id,
            parent_id: self.parent_id,
            name: self.name,
            slug: self.slug,
            ancestry_path,
            depth: self.depth,
            metadata: self.metadata,
            status: status::tenant(&self.status)?,
            deleted_at: self.deleted_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }

    fn from_domain(t: &Tenant) -> Self {
        Self {
            id: t.id,
            parent_id: t.parent_id,
            name: t.name.clone(),
            slug: t.slug.clone(),
            ancestry_path: t.ancestry_path.as_str().to_owned(),
            depth: t.depth,
            metadata: t.metadata.clone(),
            status: t.status.as_str().to_owned(),
            deleted_at: t.deleted_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
            version: t.version,
        }
    }
}

fn tenants_from(rows: Vec<TenantRow>) -> Result<Vec<Tenant>, StoreError> {
    rows.into_iter().map(TenantRow::into_domain).collect()
}

pub(crate) fn slug_taken(e: diesel::result::Error, slug: &str) -> TxError<TenancyError> {
    if is_unique_violation(&e) {
        TxError::Domain(TenancyError::Conflict(format!(
            "slug '{slug}' is already taken"
        )))
    } else {
        TxError::Db(e)
    }
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
async fn lock_active_versioned(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    exclusive: bool,
) -> QueryResult<Option<(String, i64)>> {
    let q = tenants::table
        .find(id)
        .filter(tenants::status.eq(status::TENANT_ACTIVE))
        .select((tenants::ancestry_path, tenants::version));
    if exclusive {
        q.for_update().first(conn).await.optional()
    } else {
        q.for_share().first(conn).await.optional()
    }
}

/// Locks an active tenant row and returns its path; `None` when gone or archived.
async fn lock_active(
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
fn stale_or<T>(exists: bool, not_found: TenancyError) -> TxResult<T> {
    if exists {
        fail(TenancyError::Stale)
    } else {
        fail(not_found)
    }
}

/// A tenant write waiting for its batch: the change and where its result goes.
struct ModifyJob {
    change: TenantChange,
    reply: oneshot::Sender<Result<Tenant, TenancyError>>,
}

/// Writes per batch on one tenant: bounds the time a batch holds the row lock.
const MAX_BATCH: usize = 64;

/// Frees a tenant's queue if its batch runner stops without finishing (a panic): the
/// writes queued behind it are answered with an error instead of waiting forever. Disarmed
/// once the runner found the queue empty: [`Combiner::next`] freed the key then, and a new
/// runner may already own it.
struct Release<'a> {
    hot: &'a Combiner<Uuid, ModifyJob>,
    id: Uuid,
    armed: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hot.abandon(self.id);
        }
    }
}

/// The same error for another write of a failed batch (store errors are not `Clone`).
fn again(e: &TenancyError) -> TenancyError {
    match e {
        TenancyError::Store(StoreError::Unavailable) => {
            TenancyError::Store(StoreError::Unavailable)
        }
        other => TenancyError::Store(StoreError::internal(other.to_string())),
    }
}

/// Runs a batch of writes to tenant `id` in one transaction: locks the row once, then
/// hands each change, in order, the state the previous one left (each gets its own version,
/// audit entry and event, exactly as if they had run one after the other). The row's
/// final state and every journal are then written in one pipelined round trip. A refused
/// change fails alone; so does, in a batch of several, a new slug that is taken (it is
/// written at once, inside a savepoint); a storage failure fails the batch. Answers every
/// write.
async fn modify_batch(pool: &Pool, id: Uuid, mut jobs: Vec<ModifyJob>) {
    if jobs.len() == 1 && crate::tx::ambient().is_none() {
        // The common case, in two round trips (see `tenant_write`).
        let job = jobs.remove(0);
        let _ = job
            .reply
            .send(crate::tenant_write::modify_one(pool, id, job.change).await);
        return;
    }
    let (changes, replies): (Vec<TenantChange>, Vec<_>) =
        jobs.into_iter().map(|j| (j.change, j.reply)).unzip();
    let n = changes.len();
    let outcome = in_tx!(pool, TenancyError, |conn| {
        // Read what is replaced under the row lock, in the transaction that writes.
        let row: Option<TenantRow> = tenants::table
            .find(id)
            .filter(tenants::status.eq(status::TENANT_ACTIVE))
            .select(TenantRow::as_select())
            .for_no_key_update()
            .first(conn)
            .await
            .optional()?;
        let Some(row) = row else {
            return Ok((0..n).map(|_| Err(TenancyError::TenantNotFound)).collect());
        };
        let mut current = row
            .into_domain()
            .map_err(|e| TxError::Domain(TenancyError::from(e)))?;
        let mut results: Vec<Result<Tenant, TenancyError>> = Vec::with_capacity(n);
        // Journals of changes applied to `current` but not written yet.
        let mut unwritten: Vec<AuditRecord> = Vec::new();
        for change in changes {
            let (mut next, journal) = match change(&current) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    results.push(Ok(current.clone()));
                    continue;
                }
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            next.version = current.version + 1;
            let record = journal::audit_record(&journal);
            if n > 1 && next.slug != current.slug {
                // Only a new slug can fail on the database (taken): written at once, after
                // what came before it, inside a savepoint, so it fails alone.
                write_tenant(conn, &current, &unwritten).await?;
                unwritten.clear();
                let saved = conn
                    .transaction::<_, TxError<TenancyError>, _>(async |c| {
                        write_tenant(c, &next, std::slice::from_ref(&record)).await
                    })
                    .await;
                match saved {
                    Ok(()) => {}
                    Err(TxError::Domain(e)) => {
                        results.push(Err(e));
                        continue;
                    }
                    Err(db) => return Err(db),
                }
            } else {
                unwritten.push(record);
            }
            current = next;
            results.push(Ok(current.clone()));
        }
        write_tenant(conn, &current, &unwritten).await?;
        Ok(results)
    });
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away does not hear its answer.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let mut replies = replies.into_iter();
            let first = replies.next();
            for reply in replies {
                let _ = reply.send(Err(again(&e)));
            }
            if let Some(reply) = first {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Writes `state` (its name, slug, metadata, `updated_at` and version) and `records`,
/// pipelined: every statement is sent before the first answer arrives, so the row stays
/// locked one round trip however many journals there are. Nothing to do without records.
async fn write_tenant(
    conn: &AsyncPgConnection,
    state: &Tenant,
    records: &[AuditRecord],
) -> TxResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut shared = conn;
    let update = diesel::update(tenants::table.find(state.id))
        .set((
            tenants::name.eq(&state.name),
            tenants::slug.eq(&state.slug),
            tenants::metadata.eq(&state.metadata),
            tenants::updated_at.eq(state.updated_at),
            tenants::version.eq(state.version),
        ))
        .cached()
        .execute(&mut shared);
    let appends = try_join_all(records.iter().map(|r| journal::append(conn, r)));
    let (updated, _) = try_join(update, appends)
        .await
        .map_err(|e| slug_taken(e, &state.slug))?;
    if updated != 1 {
        // The row is locked by this transaction: it cannot have gone.
        return Err(TxError::Db(diesel::result::Error::NotFound));
    }
    Ok(())
}

/// Tenants on PostgreSQL.
#[derive(Clone)]
pub struct PgTenantStore {
    pool: Pool,
    /// Writes to a tenant that arrive while a batch of it is in progress.
    hot: Arc<Combiner<Uuid, ModifyJob>>,
}

impl PgTenantStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            hot: Arc::new(Combiner::new(MAX_BATCH)),
        }
    }
}

#[async_trait]
impl TenantStore for PgTenantStore {
    async fn get(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<TenantRow> = tenants::table
            .find(id)
            .select(TenantRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        row.map(TenantRow::into_domain).transpose()
    }

    async fn get_many(&self, ids: Vec<Uuid>) -> Result<Vec<Tenant>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows = tenants::table
            .filter(tenants::id.eq_any(ids))
            .filter(tenants::status.eq(status::TENANT_ACTIVE))
            .select(TenantRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        tenants_from(rows)
    }

    async fn list(
        &self,
        subtree: Option<TenantPath>,
        after: Option<Uuid>,
        limit: Limit,
    ) -> Result<Vec<Tenant>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = tenants::table
            .filter(tenants::status.eq(status::TENANT_ACTIVE))
            .into_boxed();
        if let Some(p) = subtree {
            q = q.filter(tenants::ancestry_path.like(like_prefix(p.as_str())));
        }
        if let Some(a) = after {
            q = q.filter(tenants::id.gt(a));
        }
        let rows = q
            .order(tenants::id.asc())
            .limit(limit.fetch())
            .select(TenantRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        tenants_from(rows)
    }

    async fn children(&self, id: Uuid) -> Result<Vec<Tenant>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows = tenants::table
            .filter(tenants::parent_id.eq(id))
            .filter(tenants::status.eq(status::TENANT_ACTIVE))
            .order(tenants::id.asc())
            .select(TenantRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        tenants_from(rows)
    }

    async fn descendants(&self, path: TenantPath) -> Result<Vec<Tenant>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows = tenants::table
            .filter(tenants::ancestry_path.like(like_prefix(path.as_str())))
            .filter(tenants::ancestry_path.ne(path.as_str()))
            .filter(tenants::status.eq(status::TENANT_ACTIVE))
            .order((tenants::depth.asc(), tenants::id.asc()))
            .select(TenantRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        tenants_from(rows)
    }

    async fn create(&self, tenant: Tenant, journal: Journal) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            if let Some(parent) = tenant.parent_id {
                // Holding the parent shared keeps it from being archived or moved meanwhile.
                let expected = tenant
                    .ancestry_path
                    .as_str()
                    .strip_suffix(&format!("{}/", tenant.id));
                match lock_active(conn, parent, false).await? {
                    Some(p) if Some(p.as_str()) == expected => {}
                    Some(_) => {
                        return fail(TenancyError::Conflict(
                            "the parent moved meanwhile; retry".into(),
                        ))
                    }
                    None => return fail(TenancyError::TenantNotFound),
                }
            }
            diesel::insert_into(tenants::table)
                .values(TenantRow::from_domain(&tenant))
                .execute(conn)
                .await
                .map_err(|e| slug_taken(e, &tenant.slug))?;
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn modify(&self, id: Uuid, change: TenantChange) -> Result<Tenant, TenancyError> {
        let (reply, answer) = oneshot::channel();
        let job = ModifyJob { change, reply };
        if crate::tx::ambient().is_some() {
            // Inside a request-wide transaction: on its connection, in this task.
            modify_batch(&self.pool, id, vec![job]).await;
        } else if let Some(job) = self.hot.join(id, job) {
            // No batch of this tenant in progress: this write starts one, and the writes
            // that queue behind it follow in batches. Spawned, so a caller that goes away
            // never leaves the tenant's queue without a runner.
            let (pool, hot) = (self.pool.clone(), Arc::clone(&self.hot));
            tokio::spawn(async move {
                let mut release = Release {
                    hot: &hot,
                    id,
                    armed: true,
                };
                let mut batch = vec![job];
                while !batch.is_empty() {
                    modify_batch(&pool, id, batch).await;
                    batch = release.hot.next(id);
                }
                release.armed = false;
            });
        }
        answer.await.unwrap_or_else(|_| {
            Err(TenancyError::Store(StoreError::internal(
                "the tenant's write batch stopped before it answered",
            )))
        })
    }

    async fn archive(
        &self,
        id: Uuid,
        expected: i64,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<(), TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            // Lock first, then look for children in a later statement: a child inserted
            // concurrently holds the row shared, so this waits for it and then sees it.
            match lock_active_versioned(conn, id, true).await? {
                Some((_, v)) if v == expected => {}
                Some(_) => return fail(TenancyError::Stale),
                None => return fail(TenancyError::TenantNotFound),
            }
            let children: i64 = tenants::table
                .filter(tenants::parent_id.eq(id))
                .filter(tenants::status.eq(status::TENANT_ACTIVE))
                .count()
                .get_result(conn)
                .await?;
            if children > 0 {
                return fail(TenancyError::HasChildren);
            }
            diesel::update(tenants::table.find(id))
                .set((
                    tenants::status.eq(status::TENANT_ARCHIVED),
                    tenants::deleted_at.eq(Some(at)),
                    tenants::updated_at.eq(at),
                    tenants::version.eq(tenants::version + 1),
                ))
                .execute(conn)
                .await?;
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn move_subtree(
        &self,
        id: Uuid,
        expected: i64,
        new_parent: Uuid,
        from: TenantPath,
        to: TenantPath,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<i64, TenancyError> {
        in_tx!(self.pool, TenancyError, |conn| {
            match lock_active_versioned(conn, id, true).await? {
                Some((p, v)) if v == expected && p == from.as_str() => {}
                Some(_) => return fail(TenancyError::Stale),
                None => return fail(TenancyError::TenantNotFound),
            }
            let parent_path = match lock_active(conn, new_parent, false).await? {
                Some(p) => p,
                None => return fail(TenancyError::TenantNotFound),
            };
            if parent_path.starts_with(from.as_str()) {
                return fail(TenancyError::CycleDetected);
            }
            if format!("{parent_path}{id}/") != to.as_str() {
                // The new parent moved since the service read it: read again.
                return fail(TenancyError::Stale);
            }
            let depth_shift = to.depth() as i32 - from.depth() as i32;
            diesel::sql_query(
                "UPDATE tenants
                    SET ancestry_path = $1 || substr(ancestry_path, char_length($2) + 1),
                        depth = depth + $3,
                        parent_id = CASE WHEN id = $4 THEN $5 ELSE parent_id END,
                        updated_at = CASE WHEN id = $4 THEN $6 ELSE updated_at END,
                        version = version + 1
                  WHERE ancestry_path LIKE $7",
            )
            .bind::<diesel::sql_types::Text, _>(to.as_str())
            .bind::<diesel::sql_types::Text, _>(from.as_str())
            .bind::<diesel::sql_types::Integer, _>(depth_shift)
            .bind::<diesel::sql_types::Uuid, _>(id)
            .bind::<diesel::sql_types::Uuid, _>(new_parent)
            .bind::<diesel::sql_types::Timestamptz, _>(at)
            .bind::<diesel::sql_types::Text, _>(like_prefix(from.as_str()))
            .execute(conn)
            .await?;
            record(conn, &journal).await?;
            Ok(expected + 1)
        })
    }
}

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
