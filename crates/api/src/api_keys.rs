//! API key routes (admin, global keys only).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use stratum_tenancy::ApiKey;
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for CreateKey {}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// Bind the key to this tenant and its descendants; absent or null for a global key.
    #[serde(default)]
    tenant_id: Option<Uuid>,
    /// A label, at most 255 characters.
    #[serde(default)]
    #[schema(max_length = 255)]
    name: Option<String>,
    /// Scopes; default `["read"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<stratum_core::Scope>>, min_items = 1)]
    scopes: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CreatedApiKey)]
struct Created {
    #[serde(flatten)]
    key: ApiKey,
    /// The key itself, shown only this once.
    plaintext_key: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only keys bound to this tenant.
    tenant_id: Option<Uuid>,
}

#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    operation_id = "createApiKey",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The new key; `plaintext_key` is shown only this once", body = Created),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: crate::extract::Json<CreateKey>,
) -> Res {
    let b = body.into_inner();
    let minted = state
        .api_keys
        .create(&caller, b.tenant_id, b.name, b.scopes)
        .await?;
    Ok(HttpResponse::Created().json(Created {
        key: minted.key,
        plaintext_key: minted.plaintext,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    operation_id = "listApiKeys",
    params(ListQuery),
    responses(
        (status = 200, description = "Stored keys (never the keys themselves)", body = Vec<stratum_tenancy::ApiKey>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    Ok(HttpResponse::Ok().json(state.api_keys.list(&caller, q.tenant_id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "api-keys",
    operation_id = "revokeApiKey",
    params(("id" = Uuid, Path, description = "API key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn revoke(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    state.api_keys.revoke(&caller, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api-keys")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(web::resource("/api-keys/{id}").route(web::delete().to(revoke)));
}
