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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantConsent {
    subject_id: String,
    purpose: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct ListQuery {
    subject_id: Option<String>,
    purpose: Option<String>,
    active: Option<String>,
}

#[derive(Deserialize)]
struct RevokeQuery {
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

async fn grant(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    id: web::Path<Uuid>,
    body: web::Json<GrantConsent>,
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
