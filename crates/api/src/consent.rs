//! Consent routes.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use stratum_consent::{ConsentQuery, NewConsent};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for GrantConsent {}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantConsent {
    /// Whose consent: 1-255 characters.
    #[schema(min_length = 1, max_length = 255)]
    subject_id: String,
    /// For what.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    purpose: String,
    /// RFC 3339, in the future; absent or null = never expires.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Free-form object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this subject's records.
    #[param(min_length = 1, max_length = 255)]
    subject_id: Option<String>,
    /// Only records for this purpose.
    #[param(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    purpose: Option<String>,
    /// `true`: only granted, unexpired records; `false`: only revoked or expired ones.
    #[param(value_type = Option<bool>)]
    active: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RevokeQuery {
    /// Whose consent to revoke (required).
    #[param(required = true, value_type = String, min_length = 1, max_length = 255)]
    subject_id: Option<String>,
}

fn parse_active(raw: Option<&str>) -> Result<Option<bool>, ApiError> {
    match raw {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::field("active", "must be true or false")),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/consent",
    tag = "consent",
    operation_id = "grantConsent",
    description = "One record per (tenant, subject, purpose). 404 `TENANT_NOT_FOUND` for an unknown or invisible tenant.",
    params(("id" = Uuid, Path, description = "Tenant id")),
    request_body = GrantConsent,
    responses(
        (status = 201, description = "A new record", body = stratum_consent::ConsentRecord),
        (status = 200, description = "The existing record, re-activated and updated", body = stratum_consent::ConsentRecord),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
async fn grant(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: crate::extract::Json<GrantConsent>,
) -> Res {
    let b = body.into_inner();
    let (record, created) = state
        .consent
        .grant(
            &caller,
            *id,
            NewConsent {
                subject_id: b.subject_id,
                purpose: b.purpose,
                expires_at: b.expires_at,
                metadata: b.metadata,
            },
        )
        .await?;
    Ok(if created {
        HttpResponse::Created().json(record)
    } else {
        HttpResponse::Ok().json(record)
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/consent",
    tag = "consent",
    operation_id = "listConsent",
    params(("id" = Uuid, Path, description = "Tenant id"), ListQuery),
    responses(
        (status = 200, description = "Matching records", body = Vec<stratum_consent::ConsentRecord>),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn list(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    q: web::Query<ListQuery>,
) -> Res {
    let q = q.into_inner();
    let query = ConsentQuery {
        active: parse_active(q.active.as_deref())?,
        subject_id: q.subject_id,
        purpose: q.purpose,
    };
    Ok(HttpResponse::Ok().json(state.consent.list(&caller, *id, query).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}/consent/{purpose}",
    tag = "consent",
    operation_id = "revokeConsent",
    description = "404 `CONSENT_NOT_FOUND` when no active grant exists.",
    params(("id" = Uuid, Path, description = "Tenant id"), ("purpose" = String, Path, description = "The purpose", pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$"), RevokeQuery),
    responses(
        (status = 200, description = "Revoked", body = crate::openapi::Success),
        (status = 400, response = crate::openapi::ValidationError),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
async fn revoke(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    path: web::Path<(Uuid, String)>,
    q: web::Query<RevokeQuery>,
) -> Res {
    let (id, purpose) = path.into_inner();
    state
        .consent
        .revoke(&caller, id, &purpose, q.subject_id.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(json!({"success": true})))
}

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tenants/{id}/consent")
            .route(web::post().to(grant))
            .route(web::get().to(list)),
    )
    .service(web::resource("/tenants/{id}/consent/{purpose}").route(web::delete().to(revoke)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_is_strictly_boolean() {
        assert_eq!(parse_active(None).unwrap(), None);
        assert_eq!(parse_active(Some("true")).unwrap(), Some(true));
        assert_eq!(parse_active(Some("false")).unwrap(), Some(false));
        for bad in ["", "1", "yes", "TRUE", "False"] {
            let e = parse_active(Some(bad)).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "VALIDATION_ERROR"),
                "{bad}"
            );
        }
    }
}
