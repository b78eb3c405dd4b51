//! Tenant routes: the tree of event sources.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stratum_core::Limit;
use stratum_tenancy::{NewTenant, TenantPatch};
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

/// Registers the tenant routes.
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
    .service(web::resource("/tenants/{id}/descendants").route(web::get().to(descendants)));
}
