//! The operations surface of a process that serves no REST API (`stratum worker`):
//! liveness, readiness and metrics on a port of its own, with the same answers as the
//! API's `/health`, `/ready` and `/metrics`.

use std::sync::Arc;

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse};

use stratum_api::metrics::{Metrics, CONTENT_TYPE};
use stratum_api::ApiError;

/// What the operations endpoints read.
pub struct OpsState {
    /// The process's storage (readiness, pool gauges).
    pub storage: Arc<dyn stratum_core::StorageProbe>,
    /// The process's metrics registry.
    pub metrics: Arc<Metrics>,
}

async fn ready(state: web::Data<OpsState>) -> Result<HttpResponse, ApiError> {
    stratum_api::health::readiness(state.storage.as_ref()).await
}

async fn unknown_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("NOT_FOUND", "route"))
}

async fn scrape(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(state.metrics.render(state.storage.pool_stats()))
}

/// `GET /health`, `GET /ready`, `GET /metrics`; anything else is a 404 with the API's
/// error body.
pub fn ops_app(
    state: web::Data<OpsState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .route("/health", web::get().to(stratum_api::health::health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(scrape))
        .default_service(web::to(unknown_route))
        .wrap(actix_web::middleware::from_fn(
            stratum_api::middleware::request_id,
        ))
}
