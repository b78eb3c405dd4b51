//! Extractor configuration: every malformed path, query or body answers 400/413 with the
//! API.md error body.

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A request body the route deserializes from a JSON object.
pub trait Body: DeserializeOwned {
    /// Top-level fields that may be absent but never an explicit `null` (API.md
    /// "Conventions": an explicit null for a field that cannot be null is 400).
    const NOT_NULL: &'static [&'static str] = &[];
}

/// The JSON body extractor of every route: the body must be a JSON **object** (serde
/// would read an array into a struct), hold no U+0000 anywhere, and give no explicit
/// `null` to a field that cannot be null. Errors are 400 with the field named.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Body + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = is_json_content_type(
            req.headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let body = web::Payload::from_request(req, payload);
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::validation(
                    "request body must be JSON (Content-Type: application/json)",
                )
                .into());
            }
            let bytes = read_body(body.await?).await?;
            Ok(Json(object_body::<T>(&bytes)?))
        })
    }
}

/// Whether a `Content-Type` names JSON (`application/json` or `…+json`).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Reads a whole body of at most [`BODY_LIMIT`] bytes: 413 beyond, 408 when the body
/// deadline passes first, 400 for any other read failure.
pub async fn read_body(payload: web::Payload) -> Result<web::Bytes, ApiError> {
    match payload.to_bytes_limited(BODY_LIMIT).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if e.as_error::<PayloadError>().is_some_and(is_timeout) => Err(body_timeout()),
        Ok(Err(e)) => Err(ApiError::validation(format!("cannot read the body: {e}"))),
        Err(_) => Err(too_large()),
    }
}

/// 413 `PAYLOAD_TOO_LARGE`.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("request body is larger than {BODY_LIMIT} bytes"),
    )
}

/// Checks a body (see [`Json`]) and deserializes it. The struct is read from the bytes
/// themselves, so a key given twice is refused rather than silently collapsed.
pub fn object_body<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(ApiError::validation("request body must be a JSON object"));
    };
    if let Some(path) = stratum_core::text::find_nul(&value) {
        let field = path.trim_start_matches('.');
        return Err(ApiError::field(field, stratum_core::text::NUL_MESSAGE));
    }
    for field in T::NOT_NULL {
        if map.get(*field).is_some_and(Value::is_null) {
            return Err(ApiError::field(field, "must not be null"));
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))
}

/// 408 `REQUEST_TIMEOUT`: the body did not arrive in time. The connection is closed.
pub fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        "the request body did not arrive in time",
    )
}

/// Whether a payload error is the body deadline of [`crate::middleware::body_deadline`].
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

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
        JsonPayloadError::Payload(p) if is_timeout(p) => body_timeout(),
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
