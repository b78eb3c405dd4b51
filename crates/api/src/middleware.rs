//! Request ids and access logs.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use crate::error::REQUEST_ID;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, available to handlers through extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Gives every request an id (the caller's `X-Request-Id` when sane), echoes it on the
/// response, and logs one line per request.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let mut res = REQUEST_ID
        .scope(id.clone(), next.call(req))
        .await?
        .map_into_boxed_body();
    if res.status() == actix_web::http::StatusCode::METHOD_NOT_ALLOWED {
        // actix answers an unregistered method with an empty body; give it the error body.
        let allow = res.headers().get(actix_web::http::header::ALLOW).cloned();
        res = res.map_body(|_, _| {
            actix_web::body::BoxBody::new(
                serde_json::json!({"error": {"code": "METHOD_NOT_ALLOWED", "message": "method not allowed on this route"}})
                    .to_string(),
            )
        });
        res.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(a) = allow {
            res.headers_mut().insert(actix_web::http::header::ALLOW, a);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let status = res.status().as_u16();
    let (key_id, tenant_id) = res
        .request()
        .extensions()
        .get::<crate::auth::AuthInfo>()
        .map(|a| (Some(a.key_id.clone()), a.tenant_id.clone()))
        .unwrap_or_default();
    let latency = started.elapsed().as_secs_f64();
    if let Some(state) = res
        .request()
        .app_data::<actix_web::web::Data<crate::AppState>>()
    {
        state
            .metrics
            .observe_http(&route, method.as_str(), status, latency);
    }
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status,
        latency_ms = latency * 1000.0,
        key_id = key_id.as_deref().unwrap_or("-"),
        tenant_id = tenant_id.as_deref().unwrap_or("-"),
        "request"
    );
    Ok(res)
}
