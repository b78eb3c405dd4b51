//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;
use stratum_core::NotReady;

use crate::error::ApiError;
use crate::AppState;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "documents the json! bodies below")]
pub struct HealthStatus {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(example = "ok")]
    status: String,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "getHealth",
    responses((status = 200, description = "The process is alive", body = HealthStatus))
)]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the database is reachable and its migrations are current.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    operation_id = "getReady",
    responses(
        (status = 200, description = "Ready to serve", body = HealthStatus),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    readiness(state.storage.as_ref()).await
}

/// The readiness answer of `storage`: 200 when the database is reachable and its
/// migrations are current, 503 otherwise (shared by `serve` and `worker`).
pub async fn readiness(
    storage: &dyn stratum_core::StorageProbe,
) -> Result<HttpResponse, ApiError> {
    match storage.ready().await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({"status": "ready"}))),
        Err(NotReady::MigrationsPending) => Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "database migrations are not current",
        )),
        Err(NotReady::Unavailable) => Err(ApiError::unavailable()),
    }
}

/// `/health` and `/ready`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}
