//! Maintenance routes (admin, global keys only).

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;

type Res = Result<HttpResponse, ApiError>;

impl crate::extract::Body for RotateBody {}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    #[serde(default)]
    retention_days: Option<i64>,
}

#[derive(Serialize)]
struct Purged {
    deleted_count: u64,
    deliveries: u64,
    events: u64,
    audit_logs: u64,
    consent_records: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    old_key: String,
    new_key: String,
}

#[derive(Serialize)]
struct Rotated {
    config_entries_rotated: u64,
    webhooks_rotated: u64,
}

/// The purge body is optional: no body, an empty one, `{}` and `null` all mean the
/// defaults; anything else must be the JSON object.
fn parse_purge_body(content_type: Option<&str>, bytes: &[u8]) -> Result<PurgeBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PurgeBody::default());
    }
    let is_json = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::validation(
            "request body must be JSON (Content-Type: application/json)",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
    match value {
        serde_json::Value::Null => Ok(PurgeBody::default()),
        // serde would also take `[30]` for the struct; only an object is the body.
        v @ serde_json::Value::Object(_) => serde_json::from_value(v)
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}"))),
        _ => Err(ApiError::validation("request body must be a JSON object")),
    }
}

async fn purge_expired(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let bytes = crate::extract::read_body(payload).await?;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body = parse_purge_body(content_type, &bytes)?;
    let c = state
        .maintenance
        .purge_expired(&caller, body.retention_days)
        .await?;
    Ok(HttpResponse::Ok().json(Purged {
        deleted_count: c.deleted_count(),
        deliveries: c.deliveries,
        events: c.events,
        audit_logs: c.audit_logs,
        consent_records: c.consent_records,
    }))
}

async fn rotate_encryption_key(
    state: web::Data<AppState>,
    Authed(caller): Authed,
    body: crate::extract::Json<RotateBody>,
) -> Res {
    let b = body.into_inner();
    let c = state
        .maintenance
        .rotate_encryption_key(&caller, &b.old_key, &b.new_key)
        .await?;
    Ok(HttpResponse::Ok().json(Rotated {
        config_entries_rotated: c.config_entries,
        webhooks_rotated: c.webhooks,
    }))
}

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/maintenance/purge-expired").route(web::post().to(purge_expired)))
        .service(
            web::resource("/maintenance/rotate-encryption-key")
                .route(web::post().to(rotate_encryption_key)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn an_absent_or_empty_purge_body_means_the_defaults() {
        for (ctype, body) in [
            (None, ""),
            (None, "  \n"),
            (Some("text/plain"), ""),
            (JSON, ""),
            (JSON, "{}"),
            (JSON, "null"),
            (
                Some("application/json; charset=utf-8"),
                r#"{"retention_days": null}"#,
            ),
        ] {
            assert_eq!(
                parse_purge_body(ctype, body.as_bytes()).unwrap(),
                PurgeBody::default(),
                "{body}"
            );
        }
        assert_eq!(
            parse_purge_body(JSON, br#"{"retention_days": 30}"#)
                .unwrap()
                .retention_days,
            Some(30)
        );
    }

    #[test]
    fn a_malformed_purge_body_is_a_validation_error() {
        for (ctype, body) in [
            (JSON, r#"{"retention_days": "x"}"#),
            (JSON, r#"{"retention_days": 1.5}"#),
            (JSON, r#"{"retention_days": 99999999999999999999}"#),
            (JSON, r#"{"retention": 30}"#),
            (JSON, "[30]"),
            (JSON, "{"),
            (None, r#"{"retention_days": 30}"#),
            (Some("text/plain"), r#"{"retention_days": 30}"#),
        ] {
            let e = parse_purge_body(ctype, body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "VALIDATION_ERROR"),
                "{body}"
            );
        }
    }
}
