//! Stratum's REST surface on actix-web: routes, the auth extractor, DTOs and the one
//! error mapping. Everything here is wiring; rules live in the domain crates.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod config;
pub mod consent;
pub mod console;
pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod maintenance;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod permissions;
pub mod ratelimit;
pub mod state;
pub mod tenants;
pub mod webhooks;

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse};

pub use error::ApiError;

/// Every event a webhook may subscribe to: tenancy's and the webhooks domain's own.
pub fn event_catalogue() -> stratum_core::EventCatalogue {
    stratum_tenancy::events::catalogue().with_all(&stratum_webhooks::EVENTS)
}
pub use state::AppState;

async fn unknown_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("NOT_FOUND", "route"))
}

/// Builds the whole application for `state`.
pub fn app(
    state: web::Data<AppState>,
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
        .configure(extract::configure)
        .configure(health::routes)
        .configure(metrics::routes)
        // The console's static files need no key; the page sends one on its API calls.
        .configure(console::routes)
        // Public, and registered before the `/api/v1` scope so that it matches first.
        .route("/api/v1/openapi.json", web::get().to(openapi::serve))
        .service(
            web::scope("/api/v1")
                // Registered first, so it runs inside authentication: it needs the caller.
                .wrap(actix_web::middleware::from_fn(idempotency::idempotency))
                .wrap(actix_web::middleware::from_fn(auth::authenticate))
                .configure(routes),
        )
        .default_service(web::to(unknown_route))
        // The last one wrapped runs first: trace is outermost, then request_id.
        .wrap(actix_web::middleware::from_fn(middleware::body_deadline))
        .wrap(actix_web::middleware::from_fn(
            middleware::method_not_allowed_body,
        ))
        .wrap(actix_web::middleware::from_fn(middleware::http_metrics))
        .wrap(actix_web::middleware::from_fn(middleware::access_log))
        .wrap(actix_web::middleware::from_fn(middleware::request_id))
        .wrap(actix_web::middleware::from_fn(middleware::trace))
}

/// The `/api/v1` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(tenants::routes)
        .configure(config::routes)
        .configure(permissions::routes)
        .configure(api_keys::routes)
        .configure(audit::routes)
        .configure(consent::routes)
        .configure(maintenance::routes)
        .configure(webhooks::routes)
        .default_service(web::to(unknown_route));
}
