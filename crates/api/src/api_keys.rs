//! API key routes (admin, global keys only).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use stratum_tenancy::ApiKey;
use uuid::Uuid;

use crate::auth::GlobalAdmin;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    tenant_id: Option<Uuid>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    key: ApiKey,
    plaintext_key: String,
}

#[derive(Deserialize)]
struct ListQuery {
    tenant_id: Option<Uuid>,
}

async fn create(
    state: web::Data<AppState>,
    GlobalAdmin(caller): GlobalAdmin,
    body: web::Json<CreateKey>,
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

async fn list(
    state: web::Data<AppState>,
    GlobalAdmin(caller): GlobalAdmin,
    q: web::Query<ListQuery>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.api_keys.list(&caller, q.tenant_id).await?))
}

async fn revoke(
    state: web::Data<AppState>,
    GlobalAdmin(caller): GlobalAdmin,
    id: web::Path<Uuid>,
) -> Res {
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
