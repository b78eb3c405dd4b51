//! A tenant's permission policy routes.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use stratum_tenancy::NewPermission;
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::extract::{with_etag, IfMatch};
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for CreatePermission {}

impl crate::extract::Body for PatchPermission {
    const NOT_NULL: &'static [&'static str] = &["value", "mode"];
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreatePermission {
    /// Permission name: 1-128 characters without control characters.
    #[schema(min_length = 1, max_length = 128)]
    key: String,
    value: Value,
    #[schema(value_type = stratum_tenancy::PermissionMode)]
    mode: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchPermission {
    /// New value: any JSON value except null.
    #[serde(default)]
    #[schema(value_type = crate::openapi::NonNull)]
    value: Option<Value>,
    /// New mode.
    #[serde(default)]
    #[schema(value_type = stratum_tenancy::PermissionMode)]
    mode: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/permissions",
    tag = "permissions",
    operation_id = "listPermissions",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's permission policies", body = Vec<stratum_tenancy::PermissionPolicy>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn permissions_list(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.permissions.list(&caller, *id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/permissions",
    tag = "permissions",
    operation_id = "createPermission",
    params(("id" = Uuid, Path, description = "Tenant id")),
    request_body = CreatePermission,
    responses(
        (status = 201, description = "The new policy", body = stratum_tenancy::PermissionPolicy),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn permissions_create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: crate::extract::Json<CreatePermission>,
) -> Res {
    let b = body.into_inner();
    let p = state
        .permissions
        .create(
            &caller,
            *id,
            NewPermission {
                key: b.key,
                value: b.value,
                mode: b.mode,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(p))
}

#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{id}/permissions/{policy_id}",
    tag = "permissions",
    operation_id = "updatePermission",
    params(("id" = Uuid, Path, description = "Tenant id"), ("policy_id" = Uuid, Path, description = "Permission policy id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    request_body = PatchPermission,
    responses(
        (status = 200, description = "The updated policy", body = stratum_tenancy::PermissionPolicy, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn permissions_patch(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
    IfMatch(precondition): IfMatch,
    body: crate::extract::Json<PatchPermission>,
) -> Res {
    let (id, policy) = path.into_inner();
    let b = body.into_inner();
    let p = state
        .permissions
        .update(&caller, id, policy, b.value, b.mode, precondition)
        .await?;
    Ok(with_etag(HttpResponse::Ok(), p.version).json(p))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/permissions/{policy_id}",
    tag = "permissions",
    operation_id = "getPermission",
    params(("id" = Uuid, Path, description = "Tenant id"), ("policy_id" = Uuid, Path, description = "Permission policy id")),
    responses(
        (status = 200, description = "The policy", body = stratum_tenancy::PermissionPolicy, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn permissions_get(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Res {
    let (id, policy) = path.into_inner();
    let p = state.permissions.get(&caller, id, policy).await?;
    Ok(with_etag(HttpResponse::Ok(), p.version).json(p))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}/permissions/{policy_id}",
    tag = "permissions",
    operation_id = "deletePermission",
    params(("id" = Uuid, Path, description = "Tenant id"), ("policy_id" = Uuid, Path, description = "Permission policy id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
    )
)]
async fn permissions_delete(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
    IfMatch(precondition): IfMatch,
) -> Res {
    let (id, policy) = path.into_inner();
    state
        .permissions
        .delete(&caller, id, policy, precondition)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the permission routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tenants/{id}/permissions")
            .route(web::get().to(permissions_list))
            .route(web::post().to(permissions_create)),
    )
    .service(
        web::resource("/tenants/{id}/permissions/{policy_id}")
            .route(web::get().to(permissions_get))
            .route(web::patch().to(permissions_patch))
            .route(web::delete().to(permissions_delete)),
    );
}
