//! Tenants on PostgreSQL: reads, creation, archiving, moves, and the batched writes of
//! one tenant (a lone write takes the two-round-trip path of [`super::write`]).

use std::sync::Arc;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use stratum_core::{Journal, Limit, StoreError, TenantPath};
use stratum_tenancy::{TenancyError, Tenant, TenantChange, TenantStore};
use time::OffsetDateTime;
use uuid::Uuid;

use futures_util::future::{try_join, try_join_all};
use stratum_audit::AuditRecord;
use tokio::sync::oneshot;

use super::{fail, like_prefix, lock_active, lock_active_versioned, TxResult};
use crate::cached::CachedExt;
use crate::combine::Combiner;
use crate::error::{is_unique_violation, map_query_error};
use crate::in_tx;
use crate::journal::{self, record};
use crate::schema::tenants;
use crate::status;
use crate::tx::{read_conn, TxError};
use crate::Pool;

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

/// A tenant write waiting for its batch: the change and where its result goes.
struct ModifyJob {
    change: TenantChange,
    reply: oneshot::Sender<Result<Tenant, TenancyError>>,
    /// The caller's span and trace context: the batch runs in another task.
    span: tracing::Span,
    trace: Option<String>,
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
        // The common case, in two round trips (see `write`).
        let job = jobs.remove(0);
        let write = stratum_core::trace_context::scope(
            job.trace,
            super::write::modify_one(pool, id, job.change),
        );
        let _ = job
            .reply
            .send(tracing::Instrument::instrument(write, job.span).await);
        return;
    }
    // A batch of several runs under its first write's span and trace context.
    let (span, trace) = (jobs[0].span.clone(), jobs[0].trace.clone());
    let (changes, replies): (Vec<TenantChange>, Vec<_>) =
        jobs.into_iter().map(|j| (j.change, j.reply)).unzip();
    let n = changes.len();
    let batch = async {
        in_tx!(pool, TenancyError, |conn| {
            // Read what is replaced under the row lock, in the transaction that writes.
            let row: Option<TenantRow> = lock_row(conn, id).await.optional()?;
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
        })
    };
    let outcome =
        stratum_core::trace_context::scope(trace, tracing::Instrument::instrument(batch, span))
            .await;
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

/// The active tenant `id`, locked for the write that replaces it (the state a change reads
/// inside the transaction that writes it). Takes the connection shared, so it can be
/// pipelined with the statement before it.
pub(super) async fn lock_row(conn: &AsyncPgConnection, id: Uuid) -> QueryResult<TenantRow> {
    let mut shared = conn;
    tenants::table
        .find(id)
        .filter(tenants::status.eq(status::TENANT_ACTIVE))
        .select(TenantRow::as_select())
        .for_no_key_update()
        .first(&mut shared)
        .await
}

/// Writes `state`'s name, slug, metadata, `updated_at` and version to its row; the number
/// of rows written. Takes the connection shared, for pipelining.
pub(super) async fn update_row(conn: &AsyncPgConnection, state: &Tenant) -> QueryResult<usize> {
    let mut shared = conn;
    diesel::update(tenants::table.find(state.id))
        .set((
            tenants::name.eq(&state.name),
            tenants::slug.eq(&state.slug),
            tenants::metadata.eq(&state.metadata),
            tenants::updated_at.eq(state.updated_at),
            tenants::version.eq(state.version),
        ))
        .cached()
        .execute(&mut shared)
        .await
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
    let update = update_row(conn, state);
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
        let job = ModifyJob {
            change,
            reply,
            span: tracing::Span::current(),
            trace: stratum_core::trace_context::current(),
        };
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
