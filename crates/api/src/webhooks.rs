//! Webhook and delivery (dead-letter queue) routes.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use stratum_core::Limit;
use stratum_webhooks::{DeliveryStatus, NewWebhook, Webhook, WebhookPatch};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    url: String,
    #[serde(default)]
    tenant_id: Option<Uuid>,
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Distinguishes an absent field from an explicit `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchWebhook {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    webhook: Webhook,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    tenant_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

#[derive(Deserialize)]
struct FailedQuery {
    limit: Option<i64>,
}

async fn create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: web::Json<CreateWebhook>,
) -> Res {
    let b = body.into_inner();
    let (webhook, secret) = state
        .webhooks
        .create(
            &caller,
            NewWebhook {
                url: b.url,
                tenant_id: b.tenant_id,
                events: b.events,
                secret: b.secret,
                description: b.description,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(Created { webhook, secret }))
}

async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.list(&caller, q.tenant_id).await?))
}

async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.get(&caller, *id).await?))
}

async fn patch(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: web::Json<PatchWebhook>,
) -> Res {
    let b = body.into_inner();
    let patch = WebhookPatch {
        url: b.url,
        events: b.events,
        secret: b.secret,
        active: b.active,
        description: b.description,
    };
    Ok(HttpResponse::Ok().json(state.webhooks.update(&caller, *id, patch).await?))
}

async fn delete(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    state.webhooks.delete(&caller, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn test(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.test(&caller, *id).await?))
}

async fn deliveries(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    q: web::Query<DeliveriesQuery>,
) -> Res {
    let q = q.into_inner();
    let status = q
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::field("status", "must be pending, success or failed"))
        })
        .transpose()?;
    let limit = Limit::new(q.limit, 50, 100)?;
    let (rows, next) = state
        .webhooks
        .deliveries(&caller, *id, status, q.cursor, limit)
        .await?;
    let mut res = HttpResponse::Ok();
    if let Some(n) = next {
        res.insert_header(("X-Next-Cursor", n.to_string()));
    }
    Ok(res.json(rows))
}

async fn stats(state: web::Data<AppState>, Authed(caller): Authed) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.stats(&caller).await?))
}

async fn failed(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    q: web::Query<FailedQuery>,
) -> Res {
    let limit = Limit::new(q.limit, 100, 500)?;
    Ok(HttpResponse::Ok().json(state.webhooks.failed(&caller, limit).await?))
}

async fn retry_all(state: web::Data<AppState>, Authed(caller): Authed) -> Res {
    let retried = state.webhooks.retry_all(&caller).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"retried": retried})))
}

async fn retry(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    state.webhooks.retry(&caller, *id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true})))
}

/// Registers the routes; the fixed `deliveries/...` paths come before `{id}`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhooks/deliveries/stats").route(web::get().to(stats)))
        .service(web::resource("/webhooks/deliveries/failed").route(web::get().to(failed)))
        .service(web::resource("/webhooks/deliveries/retry-all").route(web::post().to(retry_all)))
        .service(
            web::resource("/webhooks/deliveries/{delivery_id}/retry").route(web::post().to(retry)),
        )
        .service(
            web::resource("/webhooks")
                .route(web::post().to(create))
                .route(web::get().to(list)),
        )
        .service(
            web::resource("/webhooks/{id}")
                .route(web::get().to(get))
                .route(web::patch().to(patch))
                .route(web::delete().to(delete)),
        )
        .service(web::resource("/webhooks/{id}/test").route(web::post().to(test)))
        .service(web::resource("/webhooks/{id}/deliveries").route(web::get().to(deliveries)));
}
