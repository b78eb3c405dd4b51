//! Audit log routes.

use std::sync::Arc;

use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use stratum_audit::{AuditFilter, AuditService};
use stratum_core::{timefmt, Limit, TenantPath};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this tenant's entries.
    tenant_id: Option<Uuid>,
    /// Only this action, e.g. `tenant.created`.
    action: Option<String>,
    /// Only this resource type, e.g. `tenant`.
    resource_type: Option<String>,
    /// Only this actor (an API key id, `bootstrap` or `system`).
    actor_id: Option<String>,
    /// At or after (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// At or before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<i64>,
    /// Id of the last entry of the previous page (`X-Next-Cursor`).
    cursor: Option<Uuid>,
}

fn instant(field: &str, raw: Option<&str>) -> Result<Option<time::OffsetDateTime>, ApiError> {
    raw.map(|r| {
        timefmt::parse(r).map_err(|_| ApiError::field(field, "must be an RFC 3339 timestamp"))
    })
    .transpose()
}

#[utoipa::path(
    get,
    path = "/api/v1/audit-logs",
    tag = "audit",
    operation_id = "listAuditLogs",
    params(ListQuery),
    responses(
        (status = 200, description = "Matching entries, newest first", body = Vec<stratum_audit::AuditEntry>, headers(("X-Next-Cursor" = Uuid, description = "Cursor of the next page, when more remain"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    let q = q.into_inner();
    let limit = Limit::new(q.limit, 50, 100)?;
    let filter = AuditFilter {
        tenant_id: q.tenant_id,
        action: q.action,
        resource_type: q.resource_type,
        actor_id: q.actor_id,
        from: instant("from", q.from.as_deref())?,
        to: instant("to", q.to.as_deref())?,
    };
    let (entries, next) = state.audit.list(&caller, filter, q.cursor, limit).await?;
    let mut res = HttpResponse::Ok();
    if let Some(n) = next {
        res.insert_header(("X-Next-Cursor", n.to_string()));
    }
    Ok(res.json(entries))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit-logs/{id}",
    tag = "audit",
    operation_id = "getAuditLog",
    params(("id" = Uuid, Path, description = "Audit entry id")),
    responses(
        (status = 200, description = "The entry", body = stratum_audit::AuditEntry),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.audit.get(&caller, *id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// Only this tenant's entries.
    tenant_id: Option<Uuid>,
    /// Only this action, e.g. `tenant.created`.
    action: Option<String>,
    /// Only this resource type, e.g. `tenant`.
    resource_type: Option<String>,
    /// Only this actor (an API key id, `bootstrap` or `system`).
    actor_id: Option<String>,
    /// At or after (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// At or before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// Entries per query while exporting: one page is all the export ever holds in memory.
const EXPORT_PAGE: i64 = 1000;

/// Where an export stands between two pages.
struct ExportCursor {
    audit: Arc<AuditService>,
    filter: AuditFilter,
    subtree: Option<TenantPath>,
    after_seq: i64,
    done: bool,
}

async fn next_export_page(
    mut c: ExportCursor,
) -> Result<Option<(Bytes, ExportCursor)>, actix_web::Error> {
    if c.done {
        return Ok(None);
    }
    let page = c
        .audit
        .export_page(
            c.filter.clone(),
            c.subtree.clone(),
            c.after_seq,
            EXPORT_PAGE,
        )
        .await
        .map_err(|e| {
            // The status line is gone already: the client sees a cut-off body.
            tracing::error!(error = %e, after_seq = c.after_seq, "audit export aborted");
            actix_web::error::ErrorInternalServerError("audit export failed")
        })?;
    c.done = (page.len() as i64) < EXPORT_PAGE;
    let Some(last) = page.last().and_then(|e| e.seq) else {
        return Ok(None);
    };
    c.after_seq = last;
    let mut buf = Vec::with_capacity(page.len() * 512);
    for entry in &page {
        serde_json::to_writer(&mut buf, entry)
            .map_err(actix_web::error::ErrorInternalServerError)?;
        buf.push(b'\n');
    }
    Ok(Some((Bytes::from(buf), c)))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit-logs/export",
    tag = "audit",
    operation_id = "exportAuditLogs",
    description = "Streams the sealed entries the key can see as NDJSON (one entry, as \
                   `GET /audit-logs/{id}` shows it, a line), oldest first in chain order \
                   (`seq`), with the filters of the list. Entries not sealed yet (under a \
                   second old) appear in the next export. A global export without filters \
                   is the whole chain: `stratum audit verify --file` checks it offline.",
    params(ExportQuery),
    responses(
        (status = 200, description = "One entry a line, chain order", content_type = "application/x-ndjson", body = stratum_audit::AuditEntry),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn export(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    q: web::Query<ExportQuery>,
) -> Res {
    let q = q.into_inner();
    let filter = AuditFilter {
        tenant_id: q.tenant_id,
        action: q.action,
        resource_type: q.resource_type,
        actor_id: q.actor_id,
        from: instant("from", q.from.as_deref())?,
        to: instant("to", q.to.as_deref())?,
    };
    let subtree = state.audit.export_scope(&caller, &filter).await?;
    let cursor = ExportCursor {
        audit: state.audit.clone(),
        filter,
        subtree,
        after_seq: 0,
        done: false,
    };
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(futures_util::stream::try_unfold(cursor, next_export_page)))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit-logs/verify",
    tag = "audit",
    operation_id = "verifyAuditLogs",
    description = "Recomputes the hash chain from the purge checkpoint (or the first entry) \
                   to the head and reports the first entry that was changed, deleted or \
                   reordered. Admin scope, global key.",
    responses(
        (status = 200, description = "The verification", body = stratum_audit::VerifyReport),
    )
)]
async fn verify(state: web::Data<AppState>, Authed(caller): Authed) -> Res {
    Ok(HttpResponse::Ok().json(state.audit.verify(&caller).await?))
}

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Before `/audit-logs/{id}`, which would take `verify` for an id.
    cfg.service(web::resource("/audit-logs/verify").route(web::get().to(verify)))
        .service(web::resource("/audit-logs/export").route(web::get().to(export)))
        .service(web::resource("/audit-logs").route(web::get().to(list)))
        .service(web::resource("/audit-logs/{id}").route(web::get().to(get)));
}
