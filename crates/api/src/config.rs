//! A tenant's config routes (inherited, locked and encrypted entries).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::extract::{with_etag, IfMatch};
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for PutConfig {
    const NOT_NULL: &'static [&'static str] = &["locked", "sensitive"];
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutConfig {
    /// Any JSON value.
    value: Value,
    /// Cannot be overridden below; default: as stored, else false.
    #[serde(default)]
    #[schema(nullable = false)]
    locked: Option<bool>,
    /// Stored encrypted; default: as stored or inherited, else false.
    #[serde(default)]
    #[schema(nullable = false)]
    sensitive: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/config",
    tag = "config",
    operation_id = "getResolvedConfig",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The resolved config, by key (values flow root to leaf)", body = std::collections::BTreeMap<String, stratum_tenancy::ConfigEntry>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn config_get(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.config.resolved(&caller, *id).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{id}/config/{key}",
    tag = "config",
    operation_id = "putConfig",
    description = "Sets a key on the tenant; 409 `CONFIG_LOCKED` when an ancestor locked it.",
    params(("id" = Uuid, Path, description = "Tenant id"), ("key" = String, Path, description = "Config key: 1-128 of [A-Za-z0-9_.:-], starting alphanumeric", pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    request_body = PutConfig,
    responses(
        (status = 200, description = "The entry as set", body = stratum_tenancy::ConfigEntry, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn config_put(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
    IfMatch(precondition): IfMatch,
    body: crate::extract::Json<PutConfig>,
) -> Res {
    let (id, key) = path.into_inner();
    let b = body.into_inner();
    let (entry, version) = state
        .config
        .put(
            &caller,
            id,
            &key,
            b.value,
            b.locked,
            b.sensitive,
            precondition,
        )
        .await?;
    Ok(with_etag(HttpResponse::Ok(), version).json(entry))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/config/{key}",
    tag = "config",
    operation_id = "getConfigEntry",
    description = "The entry stored at this tenant itself (not an inherited one), with its `ETag`.",
    params(("id" = Uuid, Path, description = "Tenant id"), ("key" = String, Path, description = "Config key")),
    responses(
        (status = 200, description = "The tenant's own entry", body = stratum_tenancy::ConfigEntry, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn config_entry_get(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
) -> Res {
    let (id, key) = path.into_inner();
    let (entry, version) = state.config.get_entry(&caller, id, &key).await?;
    Ok(with_etag(HttpResponse::Ok(), version).json(entry))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}/config/{key}",
    tag = "config",
    operation_id = "deleteConfig",
    params(("id" = Uuid, Path, description = "Tenant id"), ("key" = String, Path, description = "Config key: 1-128 of [A-Za-z0-9_.:-], starting alphanumeric", pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
    )
)]
async fn config_delete(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
    IfMatch(precondition): IfMatch,
) -> Res {
    let (id, key) = path.into_inner();
    state.config.delete(&caller, id, &key, precondition).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the config routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/tenants/{id}/config").route(web::get().to(config_get)))
        .service(
            web::resource("/tenants/{id}/config/{key}")
                .route(web::get().to(config_entry_get))
                .route(web::put().to(config_put))
                .route(web::delete().to(config_delete)),
        );
}
