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

#[derive(Deserialize)]
struct ListQuery {
    tenant_id: Option<Uuid>,
    action: Option<String>,
    resource_type: Option<String>,
    actor_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

fn instant(field: &str, raw: Option<&str>) -> Result<Option<time::OffsetDateTime>, ApiError> {
    raw.map(|r| {
        timefmt::parse(r).map_err(|_| ApiError::field(field, "must be an RFC 3339 timestamp"))
    })
    .transpose()
}

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

async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.audit.get(&caller, *id).await?))
}

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/audit-logs").route(web::get().to(list)))
        .service(web::resource("/audit-logs/{id}").route(web::get().to(get)));
}
