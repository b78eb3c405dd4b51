//! Extractor configuration: every malformed path, query or body answers 400/413 with the
//! API.md error body.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest};

use crate::error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 256 * 1024;

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("request body is larger than {BODY_LIMIT} bytes"),
            )
        }
        JsonPayloadError::ContentType => {
            ApiError::validation("request body must be JSON (Content-Type: application/json)")
        }
        JsonPayloadError::Deserialize(e) => ApiError::validation(format!("invalid JSON body: {e}")),
        other => ApiError::validation(format!("invalid JSON body: {other}")),
    };
    api.into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(format!("invalid query parameter: {err}")).into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    let PathError::Deserialize(e) = &err else {
        return ApiError::validation("invalid path").into();
    };
    ApiError::validation(format!("invalid path parameter: {e}")).into()
}

/// Registers the extractor configs on a scope or app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(BODY_LIMIT)
            .error_handler(json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error));
}

/// The request's `If-Match` as a [`Precondition`](stratum_core::Precondition) (`Any` when
/// absent). An unreadable header never matches, so the write answers 412.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub stratum_core::Precondition);

impl actix_web::FromRequest for IfMatch {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let precondition = match req.headers().get(actix_web::http::header::IF_MATCH) {
            None => stratum_core::Precondition::Any,
            Some(v) => v
                .to_str()
                .map(stratum_core::Precondition::from_if_match)
                .unwrap_or(stratum_core::Precondition::Never),
        };
        std::future::ready(Ok(Self(precondition)))
    }
}

/// Adds `ETag: "<version>"` to a response.
pub fn with_etag(
    mut builder: actix_web::HttpResponseBuilder,
    version: i64,
) -> actix_web::HttpResponseBuilder {
    builder.insert_header((actix_web::http::header::ETAG, stratum_core::etag(version)));
    builder
}
