//! Webhook and delivery (dead-letter queue) routes.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use stratum_core::Limit;
use stratum_webhooks::{
    DeliveryOrdering, DeliveryStatus, NewWebhook, SecretRotation, Webhook, WebhookPatch,
};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::extract::{with_etag, IfMatch};
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for CreateWebhook {
    const NOT_NULL: &'static [&'static str] = &["ordering"];
}

impl crate::extract::Body for PatchWebhook {
    const NOT_NULL: &'static [&'static str] = &["url", "events", "secret", "active", "ordering"];
}

impl crate::extract::Body for RotateSecret {
    const NOT_NULL: &'static [&'static str] = &["secret", "grace_period_seconds"];
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// Absolute `https` URL, at most 2048 characters, no credentials, no fragment, no
    /// whitespace (`http://` and private addresses only where the server allows them).
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s#]+$"
    )]
    url: String,
    /// Owner tenant; absent or null for a global webhook (global keys only).
    #[serde(default)]
    tenant_id: Option<Uuid>,
    /// Events to receive: non-empty, no duplicates.
    #[schema(value_type = std::collections::BTreeSet<crate::openapi::SubscribableEvent>, min_items = 1)]
    events: Vec<String>,
    /// Signing secret, 16-255 characters; generated (`whsec_...`) and returned once when absent.
    #[serde(default)]
    #[schema(min_length = 16, max_length = 255)]
    secret: Option<String>,
    /// Free text, at most 255 characters.
    #[serde(default)]
    #[schema(max_length = 255)]
    description: Option<String>,
    /// Most attempts started per second, summed over every worker (1-10,000); absent or null:
    /// no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit_per_second: Option<u32>,
    /// `unordered` (default) or `fifo`: one delivery in flight, in commit order.
    #[serde(default)]
    #[schema(nullable = false)]
    ordering: Option<DeliveryOrdering>,
}

/// Distinguishes an absent field from an explicit `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchWebhook {
    /// New target (same rules as on create).
    #[serde(default)]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s#]+$"
    )]
    url: Option<String>,
    /// New events: non-empty, no duplicates.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeSet<crate::openapi::SubscribableEvent>, min_items = 1)]
    events: Option<Vec<String>>,
    /// New signing secret, 16-255 characters.
    #[serde(default)]
    #[schema(nullable = false, min_length = 16, max_length = 255)]
    secret: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    #[schema(nullable = false)]
    active: Option<bool>,
    /// Null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    description: Option<Option<String>>,
    /// New rate limit (1-10,000 per second); null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    rate_limit_per_second: Option<Option<u32>>,
    /// New ordering; applies to deliveries not yet in flight.
    #[serde(default)]
    #[schema(nullable = false)]
    ordering: Option<DeliveryOrdering>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    /// The new signing secret, 16-255 characters; generated (`whsec_...`) and returned once
    /// when absent.
    #[serde(default)]
    #[schema(nullable = false, min_length = 16, max_length = 255)]
    secret: Option<String>,
    /// How long the replaced secret keeps signing beside the new one, in seconds (0-604,800;
    /// default 86,400).
    #[serde(default)]
    #[schema(nullable = false, minimum = 0, maximum = 604800)]
    grace_period_seconds: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CreatedWebhook)]
struct Created {
    #[serde(flatten)]
    webhook: Webhook,
    /// The generated secret, shown this once; absent when the request named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    secret: Option<String>,
}

/// `{"retried": n}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "documents the json! body of retry_all")]
struct RetriedCount {
    /// Deliveries moved back to pending.
    retried: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this tenant's webhooks.
    tenant_id: Option<Uuid>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryStatus>)]
    status: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<i64>,
    /// `X-Next-Cursor` of the previous page.
    cursor: Option<Uuid>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SeriesQuery {
    /// Length of the window ending now, in seconds (60-604,800).
    #[param(minimum = 60, maximum = 604_800, default = 86_400)]
    window: Option<i64>,
    /// Length of one bucket, in seconds: at least 60, at most the window, and at most 1,000
    /// buckets in the window. Default: 3,600, or the window when it is shorter.
    #[param(minimum = 60, maximum = 604_800, default = 3_600)]
    bucket: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FailedQuery {
    /// How many.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    operation_id = "createWebhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The new webhook; `secret` only when the server generated it", body = Created),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn create(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: crate::extract::Json<CreateWebhook>,
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
                rate_limit_per_second: b.rate_limit_per_second,
                ordering: b.ordering,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(Created { webhook, secret }))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    operation_id = "listWebhooks",
    params(ListQuery),
    responses(
        (status = 200, description = "Webhooks, newest first", body = Vec<Webhook>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn list(state: web::Data<AppState>, Authed(caller): Authed, q: web::Query<ListQuery>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.list(&caller, q.tenant_id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "getWebhook",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = Webhook, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn get(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    let w = state.webhooks.get(&caller, *id).await?;
    Ok(with_etag(HttpResponse::Ok(), w.version).json(w))
}

#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "updateWebhook",
    params(("id" = Uuid, Path, description = "Webhook id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the webhook is at that version (else 412)")),
    request_body = PatchWebhook,
    responses(
        (status = 200, description = "The updated webhook", body = Webhook, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
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
    body: crate::extract::Json<PatchWebhook>,
) -> Res {
    let b = body.into_inner();
    let patch = WebhookPatch {
        url: b.url,
        events: b.events,
        secret: b.secret,
        active: b.active,
        description: b.description,
        rate_limit_per_second: b.rate_limit_per_second,
        ordering: b.ordering,
    };
    let w = state
        .webhooks
        .update(&caller, *id, patch, precondition)
        .await?;
    Ok(with_etag(HttpResponse::Ok(), w.version).json(w))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotateWebhookSecret",
    description = "Makes a new signing secret current while the replaced one keeps signing for `grace_period_seconds`: during the grace period `webhook-signature` carries one `v1,<sig>` per unexpired secret, the current one first, so a receiver holding either verifies. At most 10 previous secrets are kept (the oldest goes first). Audited as `webhook.secret_rotated` with secrets redacted. `PATCH` with `secret` replaces the secret at once instead.",
    params(("id" = Uuid, Path, description = "Webhook id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the webhook is at that version (else 412)")),
    request_body = RotateSecret,
    responses(
        (status = 200, description = "The webhook; `secret` only when the server generated it", body = Created, headers(("ETag" = String, description = "`\"<version>\"`: the version to send in `If-Match`"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn rotate_secret(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    IfMatch(precondition): IfMatch,
    body: crate::extract::Json<RotateSecret>,
) -> Res {
    let b = body.into_inner();
    let (webhook, secret) = state
        .webhooks
        .rotate_secret(
            &caller,
            *id,
            SecretRotation {
                secret: b.secret,
                grace_period_seconds: b.grace_period_seconds,
            },
            precondition,
        )
        .await?;
    let version = webhook.version;
    Ok(with_etag(HttpResponse::Ok(), version).json(Created { webhook, secret }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "deleteWebhook",
    params(("id" = Uuid, Path, description = "Webhook id"), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from an `ETag`: apply only while the webhook is at that version (else 412)")),
    responses(
        (status = 204, description = "Deleted, with its deliveries"),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
    )
)]
async fn delete(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    IfMatch(precondition): IfMatch,
) -> Res {
    state.webhooks.delete(&caller, *id, precondition).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/test",
    tag = "webhooks",
    operation_id = "testWebhook",
    description = "Sends a synthetic `webhook.test` event synchronously, through the same signing and SSRF checks.",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "What the receiver answered", body = stratum_webhooks::TestResult),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn test(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.test(&caller, *id).await?))
}

impl crate::extract::Body for StartReplay {
    const NOT_NULL: &'static [&'static str] = &["since", "events"];
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartReplay {
    /// Start of the window (inclusive), RFC 3339.
    #[schema(format = DateTime)]
    since: String,
    /// End of the window (exclusive), RFC 3339; now when absent or null. At most 90 days after `since`.
    #[serde(default)]
    #[schema(format = DateTime)]
    until: Option<String>,
    /// Only these events; each must be one the webhook subscribes to. Absent: all of them.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeSet<crate::openapi::SubscribableEvent>>, nullable = false, min_items = 1)]
    events: Option<Vec<String>>,
}

fn timestamp(field: &str, raw: &str) -> Result<time::OffsetDateTime, ApiError> {
    stratum_core::timefmt::parse(raw)
        .map_err(|_| ApiError::field(field, "must be an RFC 3339 timestamp"))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/replay",
    tag = "webhooks",
    operation_id = "replayWebhook",
    description = "Re-enqueues, oldest first, one new delivery (new delivery id, the original body byte for byte) for every stored event of `[since, until)` that the webhook would receive today. A durable job: a restart resumes it. Audited as `webhook.replayed`.",
    params(("id" = Uuid, Path, description = "Webhook id")),
    request_body = StartReplay,
    responses(
        (status = 202, description = "The replay job, running", body = stratum_webhooks::Replay),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn replay(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: crate::extract::Json<StartReplay>,
) -> Res {
    let b = body.into_inner();
    let since = timestamp("since", &b.since)?;
    let until = b
        .until
        .as_deref()
        .map(|u| timestamp("until", u))
        .transpose()?;
    let r = state
        .replays
        .start(
            &caller,
            *id,
            stratum_webhooks::NewReplay {
                since,
                until,
                events: b.events,
            },
        )
        .await?;
    Ok(HttpResponse::Accepted().json(r))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/replays/{replay_id}",
    tag = "webhooks",
    operation_id = "getWebhookReplay",
    params(("id" = Uuid, Path, description = "Webhook id"), ("replay_id" = Uuid, Path, description = "Replay id")),
    responses(
        (status = 200, description = "The replay and its progress", body = stratum_webhooks::Replay),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn get_replay(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Res {
    let (id, replay_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.replays.get(&caller, id, replay_id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "deliveries",
    operation_id = "listWebhookDeliveries",
    params(("id" = Uuid, Path, description = "Webhook id"), DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = Vec<stratum_webhooks::Delivery>, headers(("X-Next-Cursor" = Uuid, description = "Cursor of the next page, when more remain"))),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/health",
    tag = "webhooks",
    operation_id = "getWebhookHealth",
    description = "Success rate and median latency of the webhook's delivery attempts over the last hour (`window_seconds`), its latest failed attempt, and how many of its deliveries are pending.",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook's health figures", body = stratum_webhooks::WebhookHealth),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn health(state: web::Data<AppState>, Authed(caller): Authed, id: web::Path<Uuid>) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.health(&caller, *id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/health/series",
    tag = "webhooks",
    operation_id = "getWebhookHealthSeries",
    description = "The webhook's delivery attempts over a window ending now, in equal buckets aligned to multiples of the bucket length since the Unix epoch, oldest first: attempts, successes, success rate and p50/p99 latency per bucket. Every bucket is present; an empty one has zero attempts and null rate and latencies. Computed from the stored attempts.",
    params(("id" = Uuid, Path, description = "Webhook id"), SeriesQuery),
    responses(
        (status = 200, description = "The buckets", body = stratum_webhooks::HealthSeries),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn health_series(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    q: web::Query<SeriesQuery>,
) -> Res {
    let q = q.into_inner();
    Ok(HttpResponse::Ok().json(
        state
            .webhooks
            .health_series(&caller, *id, q.window, q.bucket)
            .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}",
    tag = "deliveries",
    operation_id = "getWebhookDelivery",
    description = "One delivery with its webhook and its event (the body sent is `{\"id\": event.id, \"event\": event.type, \"timestamp\": event.created_at, \"tenant_id\": event.tenant_id, \"data\": event.data}`); the same shape as a dead-letter queue entry.",
    params(
        ("id" = Uuid, Path, description = "Webhook id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 200, description = "The delivery, its webhook and its event", body = stratum_webhooks::FailedDelivery),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn delivery(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Res {
    let (id, delivery_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.webhooks.delivery(&caller, id, delivery_id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/attempts",
    tag = "deliveries",
    operation_id = "listDeliveryAttempts",
    params(
        ("id" = Uuid, Path, description = "Webhook id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 200, description = "Every recorded attempt of the delivery, oldest first", body = Vec<stratum_webhooks::DeliveryAttempt>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn attempts(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, Uuid)>,
) -> Res {
    let (id, delivery_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.webhooks.attempts(&caller, id, delivery_id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries/stats",
    tag = "deliveries",
    operation_id = "getDeliveryStats",
    responses(
        (status = 200, description = "Counts over the deliveries the key can see", body = stratum_webhooks::DeliveryStats),
    )
)]
async fn stats(state: web::Data<AppState>, Authed(caller): Authed) -> Res {
    Ok(HttpResponse::Ok().json(state.webhooks.stats(&caller).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries/failed",
    tag = "deliveries",
    operation_id = "listFailedDeliveries",
    params(FailedQuery),
    responses(
        (status = 200, description = "Dead-lettered deliveries, newest first, with webhook and event", body = Vec<stratum_webhooks::FailedDelivery>),
        (status = 400, response = crate::openapi::ValidationError),
    )
)]
async fn failed(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    q: web::Query<FailedQuery>,
) -> Res {
    let limit = Limit::new(q.limit, 100, 500)?;
    Ok(HttpResponse::Ok().json(state.webhooks.failed(&caller, limit).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/deliveries/retry-all",
    tag = "deliveries",
    operation_id = "retryAllFailedDeliveries",
    responses(
        (status = 200, description = "How many failed deliveries went back to pending", body = RetriedCount),
    )
)]
async fn retry_all(state: web::Data<AppState>, Authed(caller): Authed) -> Res {
    let retried = state.webhooks.retry_all(&caller).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"retried": retried})))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/deliveries/{delivery_id}/retry",
    tag = "deliveries",
    operation_id = "retryDelivery",
    description = "409 `DELIVERY_NOT_FAILED` unless the delivery is in the failed state.",
    params(("delivery_id" = Uuid, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "Back to pending, due now", body = crate::openapi::Success),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
    )
)]
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
        .service(web::resource("/webhooks/{id}/rotate-secret").route(web::post().to(rotate_secret)))
        .service(web::resource("/webhooks/{id}/replay").route(web::post().to(replay)))
        .service(
            web::resource("/webhooks/{id}/replays/{replay_id}").route(web::get().to(get_replay)),
        )
        .service(web::resource("/webhooks/{id}/deliveries").route(web::get().to(deliveries)))
        .service(web::resource("/webhooks/{id}/health").route(web::get().to(health)))
        .service(web::resource("/webhooks/{id}/health/series").route(web::get().to(health_series)))
        .service(
            web::resource("/webhooks/{id}/deliveries/{delivery_id}").route(web::get().to(delivery)),
        )
        .service(
            web::resource("/webhooks/{id}/deliveries/{delivery_id}/attempts")
                .route(web::get().to(attempts)),
        );
}
