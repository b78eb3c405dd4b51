//! The audit log's read side on PostgreSQL.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use stratum_audit::{AuditEntry, AuditFilter, AuditLog};
use stratum_core::{StoreError, TenantPath};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::map_query_error;
use crate::schema::{audit_logs, tenants};
use crate::tenancy::like_prefix;
use crate::tx::read_conn;
use crate::Pool;

#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_logs)]
struct AuditRow {
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
}

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
        }
    }
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
        let mut q = audit_logs::table.into_boxed();
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
}
