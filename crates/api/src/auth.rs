//! Authentication, done by a middleware before any extractor runs, so a request without a
//! valid key gets 401 whatever else is wrong with it. Which scope an operation needs is the
//! domain services' decision (`Caller::require`); their `Forbidden` maps to 403.

use std::future::{ready, Ready};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use stratum_core::{Caller, RequestMeta};

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::AppState;

/// What the access log may show about the caller.
#[derive(Debug, Clone)]
pub struct AuthInfo {
    /// The key's id (`bootstrap` for the configured admin key).
    pub key_id: String,
    /// The key's tenant, if scoped.
    pub tenant_id: Option<String>,
}

fn presented_key(req: &ServiceRequest) -> Option<String> {
    if let Some(v) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Authenticates the request and hands the [`Caller`] to the handlers.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    match admit(&req).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        // Answered here, while the request is still ours to answer.
        Err(e) => Ok(req.error_response(e)),
    }
}

fn too_many_failures(secs: u64) -> ApiError {
    let mut e = ApiError::new(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "too many failed authentications from this address; retry later",
    );
    e.retry_after = Some(secs);
    e
}

async fn admit(req: &ServiceRequest) -> Result<Caller, ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(ApiError::internal("application state missing"));
    };
    let key = presented_key(req)
        .filter(|k| !k.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    // Failed authentications are limited per client address: once an address has used
    // its allowance, its keys are not even looked at until the bucket refills.
    let client = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let now = std::time::Instant::now();
    if let Some(failures) = &state.auth_failures {
        if let Some(secs) = failures.exhausted(&client, now) {
            state.metrics.observe_rate_limited();
            return Err(too_many_failures(secs));
        }
    }
    let Some(actor) = state.api_keys.authenticate(&key).await? else {
        if let Some(failures) = &state.auth_failures {
            let _ = failures.check(&client, now);
        }
        return Err(ApiError::unauthorized());
    };
    if let Some(limiter) = &state.rate_limiter {
        let exempt =
            matches!(actor.kind, stratum_core::ActorKind::Bootstrap) && !limiter.limits_bootstrap();
        if !exempt {
            if let Err(secs) = limiter.check(&actor.id(), std::time::Instant::now()) {
                state.metrics.observe_rate_limited();
                let mut e = ApiError::new(
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "too many requests for this key; retry later",
                );
                e.retry_after = Some(secs);
                return Err(e);
            }
        }
    }
    let meta = RequestMeta {
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        ip: req.peer_addr().map(|a| a.ip().to_string()),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
    };
    req.extensions_mut().insert(AuthInfo {
        key_id: actor.id(),
        tenant_id: actor.tenant.as_ref().map(|t| t.id.to_string()),
    });
    Ok(Caller { actor, meta })
}

/// The authenticated caller of a `/api/v1` route.
#[derive(Debug, Clone)]
pub struct Authed(pub Caller);

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .map(Authed)
                .ok_or_else(ApiError::unauthorized),
        )
    }
}
