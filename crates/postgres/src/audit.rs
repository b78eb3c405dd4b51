//! The audit log's read side on PostgreSQL.

use async_trait::async_trait;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use stratum_audit::chain::{reason, BadEntry, ChainPoint, ChainVerifier};
use stratum_audit::{AuditEntry, AuditFilter, AuditLog, VerifyReport};
use stratum_core::{StoreError, TenantPath};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::map_query_error;
use crate::schema::{audit_chain, audit_checkpoint, audit_logs, tenants};
use crate::tenancy::like_prefix;
use crate::tx::read_conn;
use crate::Pool;

/// Entries per round trip when verify walks the chain.
const VERIFY_PAGE: i64 = 1000;

/// How long a committed entry may stay unsealed before verify calls it suspect: far more
/// than the sealer's lag, so only an entry written behind the sealer's back (or a log whose
/// sealing is switched off) is reported.
const UNSEALED_GRACE: &str = "5 minutes";

/// An entry as stored; `FETCH` from the sealer's cursor loads it by name.
#[derive(Queryable, Selectable, QueryableByName)]
#[diesel(table_name = audit_logs)]
pub(crate) struct AuditRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    actor_id: String,
    actor_type: String,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    before_state: Option<Value>,
    after_state: Option<Value>,
    metadata: Value,
    created_at: OffsetDateTime,
    seq: Option<i64>,
    hash: Option<String>,
}

/// The columns of [`AuditRow`], for raw SQL.
pub(crate) const AUDIT_COLUMNS: &str = "id, tenant_id, actor_id, actor_type, action, \
    resource_type, resource_id, before_state, after_state, metadata, created_at, seq, hash";

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            actor_id: r.actor_id,
            actor_type: r.actor_type,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            before_state: r.before_state,
            after_state: r.after_state,
            metadata: r.metadata,
            created_at: r.created_at,
            seq: r.seq,
            hash: r.hash,
        }
    }
}

/// The entries `filter` selects, limited to tenants under `subtree` when given.
fn filtered(
    filter: AuditFilter,
    subtree: Option<TenantPath>,
) -> audit_logs::BoxedQuery<'static, Pg> {
    let mut q = audit_logs::table.into_boxed();
    if let Some(t) = filter.tenant_id {
        q = q.filter(audit_logs::tenant_id.eq(t));
    }
    if let Some(a) = filter.action {
        q = q.filter(audit_logs::action.eq(a));
    }
    if let Some(r) = filter.resource_type {
        q = q.filter(audit_logs::resource_type.eq(r));
    }
    if let Some(a) = filter.actor_id {
        q = q.filter(audit_logs::actor_id.eq(a));
    }
    if let Some(f) = filter.from {
        q = q.filter(audit_logs::created_at.ge(f));
    }
    if let Some(t) = filter.to {
        q = q.filter(audit_logs::created_at.le(t));
    }
    if let Some(p) = subtree {
        let visible = tenants::table
            .filter(tenants::ancestry_path.like(like_prefix(p.as_str())))
            .select(tenants::id);
        q = q.filter(audit_logs::tenant_id.assume_not_null().eq_any(visible));
    }
    q
}

/// The audit log on PostgreSQL.
#[derive(Clone)]
pub struct PgAuditLog {
    pool: Pool,
}

impl PgAuditLog {
    /// Wires the adapter.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl AuditLog for PgAuditLog {
    async fn list(
        &self,
        filter: AuditFilter,
        subtree: Option<TenantPath>,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<AuditEntry>>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = filtered(filter, subtree);
        if let Some(c) = cursor {
            let at: Option<(OffsetDateTime, Uuid)> = audit_logs::table
                .find(c)
                .select((audit_logs::created_at, audit_logs::id))
                .first(&mut conn)
                .await
                .optional()
                .map_err(map_query_error)?;
            let Some((at, id)) = at else { return Ok(None) };
            // Strictly after the cursor in (created_at DESC, id DESC) order.
            q = q.filter(
                audit_logs::created_at
                    .lt(at)
                    .or(audit_logs::created_at.eq(at).and(audit_logs::id.lt(id))),
            );
        }
        let rows: Vec<AuditRow> = q
            .order((audit_logs::created_at.desc(), audit_logs::id.desc()))
            .limit(limit)
            .select(AuditRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(Some(rows.into_iter().map(AuditEntry::from).collect()))
    }

    async fn get(&self, id: Uuid) -> Result<Option<(AuditEntry, Option<TenantPath>)>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<(AuditRow, Option<String>)> = audit_logs::table
            .left_join(tenants::table.on(tenants::id.nullable().eq(audit_logs::tenant_id)))
            .filter(audit_logs::id.eq(id))
            .select((AuditRow::as_select(), tenants::ancestry_path.nullable()))
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(|(r, p)| (r.into(), p.as_deref().and_then(TenantPath::parse))))
    }

    async fn tenant_path(&self, tenant_id: Uuid) -> Result<Option<TenantPath>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let p: Option<String> = tenants::table
            .find(tenant_id)
            .select(tenants::ancestry_path)
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(p.as_deref().and_then(TenantPath::parse))
    }

    async fn export_page(
        &self,
        filter: AuditFilter,
        subtree: Option<TenantPath>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let rows: Vec<AuditRow> = filtered(filter, subtree)
            .filter(audit_logs::seq.gt(after_seq))
            .order(audit_logs::seq.asc())
            .limit(limit)
            .select(AuditRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }

    async fn verify_chain(&self) -> Result<VerifyReport, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| verify_on(conn).await)
            .await
            .map_err(map_query_error)
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Walks the chain on one snapshot (checkpoint, head and entries agree with each other
/// even while the sealer or a purge commits) and stops at the first bad entry.
async fn verify_on(conn: &mut AsyncPgConnection) -> QueryResult<VerifyReport> {
    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    let checkpoint: Option<(i64, String)> = audit_checkpoint::table
        .select((audit_checkpoint::seq, audit_checkpoint::hash))
        .first(conn)
        .await
        .optional()?;
    let head: Option<(i64, String)> = audit_chain::table
        .select((audit_chain::seq, audit_chain::hash))
        .first(conn)
        .await
        .optional()?;
    let anchor = checkpoint
        .map(|(seq, hash)| ChainPoint { seq, hash })
        .unwrap_or_else(ChainPoint::genesis);
    let mut after = anchor.seq;
    let mut verifier = ChainVerifier::new(anchor, head.map(|(seq, hash)| ChainPoint { seq, hash }));
    while !verifier.failed() {
        let rows: Vec<AuditRow> = audit_logs::table
            .filter(audit_logs::seq.gt(after))
            .order(audit_logs::seq.asc())
            .limit(VERIFY_PAGE)
            .select(AuditRow::as_select())
            .load(conn)
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            after = row.seq.unwrap_or(after);
            let shown = serde_json::to_value(AuditEntry::from(row))
                .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
            verifier.push(&shown);
            if verifier.failed() {
                break;
            }
        }
    }
    if !verifier.failed() {
        // Visible, so committed; written long ago, yet never sealed: slipped in behind the
        // sealer (or sealing is switched off). `created_at` is when its transaction began,
        // so only a transaction longer than the grace can be named here, and only for the
        // moment between its commit and the next pass.
        let stale: Option<IdRow> = diesel::sql_query(format!(
            "SELECT id FROM audit_logs
              WHERE seq IS NULL AND created_at < now() - interval '{UNSEALED_GRACE}'
              ORDER BY xid NULLS FIRST, created_at, id
              LIMIT 1"
        ))
        .get_result(conn)
        .await
        .optional()?;
        if let Some(r) = stale {
            verifier.fail(BadEntry {
                id: Some(r.id),
                seq: None,
                reason: reason::UNSEALED.to_owned(),
            });
        }
    }
    Ok(verifier.finish())
}
