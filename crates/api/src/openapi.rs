//! The OpenAPI 3.1 document of the REST API ([`ApiDoc`]), served without authentication at
//! `GET /api/v1/openapi.json`.
//!
//! Handlers carry their own `#[utoipa::path]`; the routes whose handlers live in files owned
//! elsewhere (`/metrics`, `/api/v1/maintenance/*`) are documented here by doc-only stubs.
//! The route test (`crates/server/tests/api_openapi.rs`) checks that the document and the
//! actix registrations name exactly the same (method, path) pairs.

use std::sync::OnceLock;

use actix_web::HttpResponse;
#[cfg(test)]
use serde_json::json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ApiError;
use crate::{api_keys, audit, config, consent, console, health, permissions, tenants, webhooks};

/// Paths that need no API key; every other operation requires `api_key` or `bearer`.
pub const PUBLIC_PATHS: [&str; 7] = [
    "/health",
    "/ready",
    "/metrics",
    "/api/v1/openapi.json",
    "/",
    "/console/",
    "/console/{file}",
];

/// The whole REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stratum",
        description = "Webhook, audit and consent control plane. Every route under `/api/v1` \
                       (except this document) needs an API key, as `X-API-Key: <key>` or \
                       `Authorization: Bearer <key>`. Errors always have the `ErrorBody` shape."
    ),
    paths(
        health::health,
        health::ready,
        metrics_doc,
        serve,
        tenants::create,
        tenants::list,
        tenants::get,
        tenants::patch,
        tenants::archive,
        tenants::move_to,
        tenants::children,
        tenants::ancestors,
        tenants::descendants,
        config::config_get,
        config::config_put,
        config::config_entry_get,
        config::config_delete,
        permissions::permissions_list,
        permissions::permissions_create,
        permissions::permissions_patch,
        permissions::permissions_get,
        permissions::permissions_delete,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::patch,
        webhooks::delete,
        webhooks::test,
        webhooks::rotate_secret,
        webhooks::replay,
        webhooks::get_replay,
        webhooks::deliveries,
        webhooks::health,
        webhooks::health_series,
        webhooks::delivery,
        webhooks::attempts,
        console::root,
        console::index,
        console::asset,
        console::favicon,
        webhooks::stats,
        webhooks::failed,
        webhooks::retry_all,
        webhooks::retry,
        audit::list,
        audit::get,
        audit::export,
        audit::verify,
        consent::grant,
        consent::list,
        consent::revoke,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        purge_expired_doc,
        rotate_encryption_key_doc,
    ),
    components(
        schemas(ErrorBody, ErrorObject, FieldErrorDoc, SubscribableEvent, NonNull),
        responses(
            ValidationError,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            IdempotencyKeyReused,
            PayloadTooLarge,
            PreconditionFailed,
            RequestTimeout,
            RateLimited,
            InternalError,
            Unavailable
        )
    ),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "tenants", description = "The tenant tree"),
        (name = "config", description = "Inherited configuration"),
        (name = "permissions", description = "Permission policies"),
        (name = "webhooks", description = "Webhook registrations"),
        (name = "deliveries", description = "Deliveries and the dead-letter queue"),
        (name = "audit", description = "The audit log"),
        (name = "consent", description = "Consent records"),
        (name = "api-keys", description = "API keys (admin scope, global key)"),
        (name = "maintenance", description = "Retention and key rotation (admin scope, global key)"),
        (name = "operations", description = "Liveness, readiness, metrics and this document"),
        (name = "console", description = "The web console's static files (no key; the page sends the key on its API calls)"),
    )
)]
pub struct ApiDoc;

/// Adds the two security schemes and exempts the public paths from the global requirement.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key, as `Authorization: Bearer <key>`."))
                    .build(),
            ),
        );
        // Every authenticated operation can answer these; they are added here once rather
        // than listed on each route.
        let shared = [
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("429", "RateLimited"),
            ("500", "InternalError"),
            ("503", "Unavailable"),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                // Whatever takes a body can also fail to read it.
                let body = if op.request_body.is_some() {
                    &[
                        ("400", "ValidationError"),
                        ("408", "RequestTimeout"),
                        ("413", "PayloadTooLarge"),
                    ][..]
                } else {
                    &[][..]
                };
                for &(status, name) in shared.iter().chain(body) {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            Ref::new(format!("#/components/responses/{name}")).into()
                        });
                }
            }
            // Every POST takes an `Idempotency-Key` (API.md "Idempotency keys").
            if let Some(op) = item.post.as_mut() {
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .push(idempotency_key_parameter());
                for (status, name) in [
                    ("400", "ValidationError"),
                    ("409", "Conflict"),
                    ("422", "IdempotencyKeyReused"),
                ] {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            Ref::new(format!("#/components/responses/{name}")).into()
                        });
                }
            }
        }
        for path in PUBLIC_PATHS {
            if let Some(item) = openapi.paths.paths.get_mut(path) {
                for op in [
                    &mut item.get,
                    &mut item.put,
                    &mut item.post,
                    &mut item.delete,
                    &mut item.options,
                    &mut item.head,
                    &mut item.patch,
                    &mut item.trace,
                ]
                .into_iter()
                .flatten()
                {
                    // `[]`: no requirement at all (an empty object would mean "optional").
                    op.security = Some(Vec::new());
                }
            }
        }
    }
}

/// The optional `Idempotency-Key` header of every POST.
fn idempotency_key_parameter() -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::Required;
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1-255 visible ASCII characters, scoped to the API key, kept 24 h. The first \
             request's 2xx status and body are stored in the transaction of its change; a \
             repeat with the same method, path and body gets them back with \
             `Idempotent-Replayed: true` and changes nothing; another body is 422 \
             `IDEMPOTENCY_KEY_REUSED`; a repeat while the first runs is 409 \
             `IDEMPOTENCY_KEY_IN_PROGRESS`. Refused (400) by `POST /api-keys`, \
             `POST /maintenance/rotate-encryption-key`, and `POST /webhooks` without a \
             `secret`, whose responses would hold a secret in clear.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[\\x21-\\x7E]{1,255}$")),
        ))
        .build()
}

/// The document, pretty-printed (what `stratum openapi` prints).
pub fn pretty_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    operation_id = "getOpenApiDocument",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object),
    )
)]
pub async fn serve() -> Result<HttpResponse, ApiError> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    match DOC.get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string())) {
        Ok(doc) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(doc.as_str())),
        Err(e) => Err(ApiError::internal(format!("openapi document: {e}"))),
    }
}

// ---------------------------------------------------------------------------------------
// Schemas of the error body.

/// The body of every error response.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "VALIDATION_ERROR", "message": "url: must use https",
    "details": [{"field": "url", "message": "must use https"}]}}))]
#[allow(dead_code, reason = "documents the shape error.rs serializes")]
pub struct ErrorBody {
    /// The error.
    error: ErrorObject,
}

/// What went wrong.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documents the shape error.rs serializes")]
pub struct ErrorObject {
    /// Stable `SCREAMING_SNAKE` code: `VALIDATION_ERROR`, `WEBHOOK_URL_INVALID`,
    /// `INVALID_OLD_KEY`, `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `TENANT_NOT_FOUND`,
    /// `WEBHOOK_NOT_FOUND`, `DELIVERY_NOT_FOUND`, `AUDIT_ENTRY_NOT_FOUND`, `CONSENT_NOT_FOUND`,
    /// `CONFLICT`, `DELIVERY_NOT_FAILED`, `CONFIG_LOCKED`, `HAS_CHILDREN`, `CYCLE_DETECTED`,
    /// `ROTATION_IN_PROGRESS`, `PAYLOAD_TOO_LARGE`, `RATE_LIMITED`, `INTERNAL_ERROR`,
    /// `SERVICE_UNAVAILABLE`, `ENCRYPTION_KEY_UNAVAILABLE`.
    #[schema(example = "VALIDATION_ERROR")]
    code: String,
    /// Human text.
    message: String,
    /// Field-level problems, when they help.
    #[schema(nullable = false)]
    details: Option<Vec<FieldErrorDoc>>,
    /// The request id, on 5xx answers (also in the `X-Request-Id` header).
    #[schema(nullable = false)]
    request_id: Option<String>,
}

/// One field-level problem.
#[derive(ToSchema)]
#[schema(as = FieldError)]
#[allow(dead_code, reason = "documents the shape error.rs serializes")]
pub struct FieldErrorDoc {
    /// The offending field.
    field: String,
    /// What is wrong with it.
    message: String,
}

/// `{"success": true}`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documents json! bodies")]
pub struct Success {
    /// Always true.
    success: bool,
}

/// Any JSON value except `null`.
pub struct NonNull;

impl utoipa::PartialSchema for NonNull {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::String,
                Type::Number,
                Type::Integer,
                Type::Boolean,
                Type::Object,
                Type::Array,
            ]))
            .description(Some("Any JSON value except null."))
            .into()
    }
}

impl ToSchema for NonNull {}

/// An event a webhook may subscribe to: the schema's enum is tenancy's event catalogue,
/// the one the server registers with the webhooks domain.
pub struct SubscribableEvent;

impl utoipa::PartialSchema for SubscribableEvent {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        let catalogue = crate::event_catalogue();
        let described: Vec<String> = catalogue
            .events()
            .iter()
            .map(|e| format!("- `{}`: {}", e.event_type, e.description))
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(catalogue.names()))
            .description(Some(format!(
                "An event a webhook may subscribe to.\n\n{}",
                described.join("\n")
            )))
            .into()
    }
}

impl ToSchema for SubscribableEvent {}

// ---------------------------------------------------------------------------------------
// Reusable error responses (`#/components/responses/...`), all with the `ErrorBody` schema.

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

macro_rules! error_responses {
    ($($name:ident => $description:literal,)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description).build().into())
            }
        }
    )*};
}

error_responses! {
    ValidationError => "`VALIDATION_ERROR` (bad body, query or path parameter, malformed UUID, \
        body that is not JSON), `WEBHOOK_URL_INVALID` or `INVALID_OLD_KEY`",
    Unauthorized => "`UNAUTHORIZED`: no key, an unknown key or a revoked key",
    Forbidden => "`FORBIDDEN`: the key lacks the scope the route needs, or a tenant-scoped key \
        called a global-only route",
    NotFound => "`NOT_FOUND`, `TENANT_NOT_FOUND`, `WEBHOOK_NOT_FOUND`, `DELIVERY_NOT_FOUND`, \
        `AUDIT_ENTRY_NOT_FOUND` or `CONSENT_NOT_FOUND`: no such thing, or not visible to this key",
    Conflict => "`CONFLICT`, `DELIVERY_NOT_FAILED`, `CONFIG_LOCKED`, `HAS_CHILDREN`, \
        `CYCLE_DETECTED`, `ROTATION_IN_PROGRESS` (another key rotation is running) or \
        `IDEMPOTENCY_KEY_IN_PROGRESS` (a request with the same `Idempotency-Key` is still \
        running)",
    IdempotencyKeyReused => "`IDEMPOTENCY_KEY_REUSED`: the `Idempotency-Key` was used \
        with another method, path or body",
    PayloadTooLarge => "`PAYLOAD_TOO_LARGE`: the body is over the limit (256 KiB)",
    PreconditionFailed => "`PRECONDITION_FAILED`: `If-Match` names a version that is no longer \
        current; nothing changed",
    RequestTimeout => "`REQUEST_TIMEOUT`: the body did not arrive within \
        `STRATUM_REQUEST_BODY_TIMEOUT_MS`; the connection is closed",
    InternalError => "`INTERNAL_ERROR`: a bug; the body carries the request id",
    Unavailable => "`SERVICE_UNAVAILABLE`: the database is unreachable; or \
        `ENCRYPTION_KEY_UNAVAILABLE`: a secret the request needs is encrypted under a key this \
        process does not hold (another process rotated; restart this one with the new key). \
        Either way the request changed nothing",
}

/// `RATE_LIMITED`: the per-key limit was hit.
pub struct RateLimited;

impl<'r> utoipa::ToResponse<'r> for RateLimited {
    fn response() -> (&'r str, RefOr<Response>) {
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .description(Some("Seconds to wait before retrying"))
            .build();
        (
            "RateLimited",
            error_response("`RATE_LIMITED`: the per-key request limit was hit")
                .header("Retry-After", retry_after)
                .build()
                .into(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Routes whose handlers live in files owned elsewhere: documented by doc-only stubs.

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "getMetrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
    )
)]
#[allow(
    dead_code,
    reason = "documentation only; the handler is metrics::scrape"
)]
fn metrics_doc() {}

/// Body of `POST /maintenance/purge-expired` (optional).
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "documentation only")]
pub struct PurgeExpiredRequest {
    /// Retention window in days for deliveries, events and consent records (default
    /// `STRATUM_RETENTION_DAYS`, 90).
    #[schema(minimum = 1, maximum = 3650)]
    retention_days: Option<i64>,
}

/// What a purge deleted.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only")]
pub struct PurgeExpiredResult {
    /// Rows deleted in all.
    deleted_count: i64,
    /// Finished deliveries (with their attempts).
    deliveries: i64,
    /// Events no pending delivery needs.
    events: i64,
    /// Audit entries older than `STRATUM_AUDIT_RETENTION_DAYS`.
    audit_logs: i64,
    /// Consent records that expired or were revoked before the window.
    consent_records: i64,
}

/// Body of `POST /maintenance/rotate-encryption-key`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "documentation only")]
pub struct RotateEncryptionKeyRequest {
    /// The encryption key in use.
    old_key: String,
    /// The new key: at least 32 characters, different from `old_key`.
    #[schema(min_length = 32)]
    new_key: String,
}

/// What a key rotation re-encrypted.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documentation only")]
pub struct RotateEncryptionKeyResult {
    /// Sensitive config values re-encrypted.
    config_entries_rotated: i64,
    /// Webhook secrets re-encrypted.
    webhooks_rotated: i64,
}

/// `POST /maintenance/purge-expired`.
#[utoipa::path(
    post,
    path = "/api/v1/maintenance/purge-expired",
    tag = "maintenance",
    operation_id = "purgeExpired",
    description = "Deletes, in one transaction, finished deliveries and events older than the \
                   window that no pending delivery needs, audit entries older than \
                   `STRATUM_AUDIT_RETENTION_DAYS` (default 365), and consent records that \
                   expired or were revoked before the window. Itself audited.",
    request_body(content = Option<PurgeExpiredRequest>, description = "Optional; `{}` or no body uses the defaults"),
    responses(
        (status = 200, description = "What was deleted", body = PurgeExpiredResult),
        (status = 400, response = ValidationError),
        (status = 413, response = PayloadTooLarge),
    )
)]
#[allow(
    dead_code,
    reason = "documentation only; the handler is in maintenance.rs"
)]
fn purge_expired_doc() {}

/// `POST /maintenance/rotate-encryption-key`.
#[utoipa::path(
    post,
    path = "/api/v1/maintenance/rotate-encryption-key",
    tag = "maintenance",
    operation_id = "rotateEncryptionKey",
    description = "Re-encrypts every sensitive config value and webhook secret in one \
                   transaction; a wrong `old_key` answers 400 `INVALID_OLD_KEY` and changes \
                   nothing. Linearizable: of concurrent rotations exactly one runs, the others \
                   answer 409 `ROTATION_IN_PROGRESS` (or 400 `INVALID_OLD_KEY` once it \
                   committed); secrets written meanwhile end up under the new key. Set \
                   `STRATUM_ENCRYPTION_KEY` to the new key before the next restart.",
    request_body = RotateEncryptionKeyRequest,
    responses(
        (status = 200, description = "What was re-encrypted", body = RotateEncryptionKeyResult),
        (status = 400, response = ValidationError),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
    )
)]
#[allow(
    dead_code,
    reason = "documentation only; the handler is in maintenance.rs"
)]
fn rotate_encryption_key_doc() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_with_public_paths_unsecured() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"));
        assert_eq!(doc["info"]["title"], "Stratum");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for p in PUBLIC_PATHS {
            assert_eq!(doc["paths"][p]["get"]["security"], json!([]), "{p}");
        }
        assert_eq!(
            doc["security"],
            json!([{"api_key": []}, {"bearer": []}]),
            "global requirement"
        );
    }

    #[test]
    fn the_subscribable_event_enum_is_the_registered_catalogue() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let schema = &doc["components"]["schemas"]["SubscribableEvent"];
        let catalogue = crate::event_catalogue();
        let names = catalogue.names();
        assert_eq!(names.len(), 10, "tenancy's nine and webhook.disabled");
        assert_eq!(schema["enum"], json!(names), "{schema}");
        assert_eq!(schema["type"], "string");
    }
}
