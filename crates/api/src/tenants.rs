//! Tenants, config and permission routes: the event sources.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stratum_core::Limit;
use stratum_tenancy::{NewPermission, NewTenant, TenantPatch};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::extract::{with_etag, IfMatch};
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for CreateTenant {}

impl crate::extract::Body for PatchTenant {
    const NOT_NULL: &'static [&'static str] = &["name", "slug", "metadata"];
}

impl crate::extract::Body for MoveTenant {}

impl crate::extract::Body for PutConfig {
    const NOT_NULL: &'static [&'static str] = &["locked", "sensitive"];
}

impl crate::extract::Body for CreatePermission {}

impl crate::extract::Body for PatchPermission {
    const NOT_NULL: &'static [&'static str] = &["value", "mode"];
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Display name, 1-255 characters, not blank.
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    /// Unique handle.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    slug: String,
    /// Parent tenant; absent or null for a root.
    #[serde(default)]
    parent_id: Option<Uuid>,
    /// Free-form object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    /// New display name, 1-255 characters, not blank.
    #[serde(default)]
    #[schema(nullable = false, min_length = 1, max_length = 255)]
    name: Option<String>,
    /// New unique handle.
    #[serde(default)]
    #[schema(nullable = false, pattern = "^[a-z][a-z0-9_]{0,62}$")]
    slug: Option<String>,
    /// New metadata; replaces the old object.
    #[serde(default)]
    #[schema(value_type = Option<Object>, nullable = false)]
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveTenant {
    new_parent_id: Uuid,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// Page size.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantPage {
    /// The tenants of this page.
    data: Vec<stratum_tenancy::Tenant>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<Uuid>,
    /// Whether another page follows.
    has_more: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "tenants",
    operation_id = "createTenant",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "The new tenant", body = stratum_tenancy::Tenant),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: crate::extract::Json<CreateTenant>,
) -> Res {
    let b = body.into_inner();
    let t = state
        .tenants
        .create(
            &caller,
            NewTenant {
                name: b.name,
                slug: b.slug,
                parent_id: b.parent_id,
                metadata: b.metadata,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(t))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    operation_id = "listTenants",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tenants", body = TenantPage),
        (status = 400, response = crate::openapi::ValidationError),
    )
)]
async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    let limit = Limit::new(q.limit, 50, 100)?;
    let (data, next_cursor) = state.tenants.list(&caller, q.cursor, limit).await?;
    Ok(HttpResponse::Ok().json(TenantPage {
        data,
        has_more: next_cursor.is_some(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    operation_id = "getTenant",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = stratum_tenancy::Tenant, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    let t = state.tenants.get(&caller, *id).await?;
    Ok(with_etag(HttpResponse::Ok(), t.version).json(t))
}

#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    operation_id = "updateTenant",
    params(("id" = Uuid, Path, description = "Tenant id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    request_body = PatchTenant,
    responses(
        (status = 200, description = "The updated tenant", body = stratum_tenancy::Tenant, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn patch(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    IfMatch(precondition): IfMatch,
    body: crate::extract::Json<PatchTenant>,
) -> Res {
    let b = body.into_inner();
    let t = state
        .tenants
        .update(
            &caller,
            *id,
            TenantPatch {
                name: b.name,
                slug: b.slug,
                metadata: b.metadata,
            },
            precondition,
        )
        .await?;
    Ok(with_etag(HttpResponse::Ok(), t.version).json(t))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    operation_id = "archiveTenant",
    description = "Archives the tenant; 409 `HAS_CHILDREN` while it has active children.",
    params(("id" = Uuid, Path, description = "Tenant id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    responses(
        (status = 204, description = "Archived"),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
    )
)]
async fn archive(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    IfMatch(precondition): IfMatch,
) -> Res {
    state.tenants.archive(&caller, *id, precondition).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/move",
    tag = "tenants",
    operation_id = "moveTenant",
    description = "Moves the tenant under another parent; 409 `CYCLE_DETECTED` for itself or a descendant.",
    params(("id" = Uuid, Path, description = "Tenant id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the resource is at that version (else 412)")),
    request_body = MoveTenant,
    responses(
        (status = 200, description = "The moved tenant", body = stratum_tenancy::Tenant, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn move_to(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    IfMatch(precondition): IfMatch,
    body: crate::extract::Json<MoveTenant>,
) -> Res {
    let t = state
        .tenants
        .move_to(&caller, *id, body.new_parent_id, precondition)
        .await?;
    Ok(with_etag(HttpResponse::Ok(), t.version).json(t))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/children",
    tag = "tenants",
    operation_id = "listTenantChildren",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Direct children", body = Vec<stratum_tenancy::Tenant>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn children(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.children(&caller, *id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/ancestors",
    tag = "tenants",
    operation_id = "listTenantAncestors",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Ancestors, root first", body = Vec<stratum_tenancy::Tenant>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn ancestors(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.ancestors(&caller, *id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/descendants",
    tag = "tenants",
    operation_id = "listTenantDescendants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Every descendant", body = Vec<stratum_tenancy::Tenant>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn descendants(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.descendants(&caller, *id).await?))
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

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tenants")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/tenants/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(patch))
            .route(web::delete().to(archive)),
    )
    .service(web::resource("/tenants/{id}/move").route(web::post().to(move_to)))
    .service(web::resource("/tenants/{id}/children").route(web::get().to(children)))
    .service(web::resource("/tenants/{id}/ancestors").route(web::get().to(ancestors)))
    .service(web::resource("/tenants/{id}/descendants").route(web::get().to(descendants)))
    .service(web::resource("/tenants/{id}/config").route(web::get().to(config_get)))
    .service(
        web::resource("/tenants/{id}/config/{key}")
            .route(web::get().to(config_entry_get))
            .route(web::put().to(config_put))
            .route(web::delete().to(config_delete)),
    )
    .service(
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
