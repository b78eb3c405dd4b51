//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::AppState;

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut conn = state
        .pool
        .get()
        .await
        .map_err(|_| ApiError::unavailable())?;
    match stratum_postgres::migrations_current(&mut conn).await {
        Ok(true) => Ok(HttpResponse::Ok().json(json!({"status": "ready"}))),
        Ok(false) => Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "database migrations are not current",
        )),
        Err(_) => Err(ApiError::unavailable()),
    }
}

/// `/health` and `/ready`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}
