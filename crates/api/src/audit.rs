//! Audit log routes.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use stratum_audit::AuditFilter;
use stratum_core::{timefmt, Limit};
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

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/audit-logs").route(web::get().to(list)))
        .service(web::resource("/audit-logs/{id}").route(web::get().to(get)));
}
