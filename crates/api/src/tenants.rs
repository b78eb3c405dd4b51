//! Tenants, config and permission routes: the event sources.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stratum_core::Limit;
use stratum_tenancy::{NewPermission, NewTenant, TenantPatch};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    slug: String,
    #[serde(default)]
    parent_id: Option<Uuid>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveTenant {
    new_parent_id: Uuid,
}

#[derive(Deserialize)]
struct ListQuery {
    cursor: Option<Uuid>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct TenantPage<T> {
    data: Vec<T>,
    next_cursor: Option<Uuid>,
    has_more: bool,
}

async fn create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: web::Json<CreateTenant>,
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

async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    let limit = Limit::new(q.limit, 50, 100)?;
    let (data, next_cursor) = state.tenants.list(&caller, q.cursor, limit).await?;
    Ok(HttpResponse::Ok().json(TenantPage {
        data,
        has_more: next_cursor.is_some(),
        next_cursor,
    }))
}

async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.get(&caller, *id).await?))
}

async fn patch(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: web::Json<PatchTenant>,
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
        )
        .await?;
    Ok(HttpResponse::Ok().json(t))
}

async fn archive(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    state.tenants.archive(&caller, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn move_to(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: web::Json<MoveTenant>,
) -> Res {
    Ok(HttpResponse::Ok().json(
        state
            .tenants
            .move_to(&caller, *id, body.new_parent_id)
            .await?,
    ))
}

async fn children(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.children(&caller, *id).await?))
}

async fn ancestors(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.ancestors(&caller, *id).await?))
}

async fn descendants(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.tenants.descendants(&caller, *id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConfig {
    value: Value,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    sensitive: Option<bool>,
}

async fn config_get(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.config.resolved(&caller, *id).await?))
}

async fn config_put(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
    body: web::Json<PutConfig>,
) -> Res {
    let (id, key) = path.into_inner();
    let b = body.into_inner();
    Ok(HttpResponse::Ok().json(
        state
            .config
            .put(&caller, id, &key, b.value, b.locked, b.sensitive)
            .await?,
    ))
}

async fn config_delete(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
) -> Res {
    let (id, key) = path.into_inner();
    state.config.delete(&caller, id, &key).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePermission {
    key: String,
    value: Value,
    mode: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchPermission {
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    mode: Option<String>,
}

async fn permissions_list(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
) -> Res {
    Ok(HttpResponse::Ok().json(state.permissions.list(&caller, *id).await?))
}

async fn permissions_create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: web::Json<CreatePermission>,
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

async fn permissions_patch(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<PatchPermission>,
) -> Res {
    let (id, policy) = path.into_inner();
    let b = body.into_inner();
    Ok(HttpResponse::Ok().json(
        state
            .permissions
            .update(&caller, id, policy, b.value, b.mode)
            .await?,
    ))
}

async fn permissions_delete(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Res {
    let (id, policy) = path.into_inner();
    state.permissions.delete(&caller, id, policy).await?;
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
            .route(web::patch().to(permissions_patch))
            .route(web::delete().to(permissions_delete)),
    );
}
