//! `Idempotency-Key` on every `POST` (API.md "Idempotency keys").
//!
//! A request with a key runs inside one PostgreSQL transaction that holds the key's lock
//! (a concurrent repeat gets 409 `IDEMPOTENCY_KEY_IN_PROGRESS`); every store write of the
//! request joins that transaction, and the key with the response is inserted into it just
//! before the commit. So the change and its key commit together or not at all: a crash
//! can never leave one without the other. Only 2xx responses are stored; any other answer
//! rolls the transaction back and leaves the key unused. When the commit's answer is lost
//! (the database primary went away), the storage settles it before anything is answered:
//! the request is acknowledged only when its key holds a response to it on the primary
//! reached next, and then with that response; otherwise it answers 503 and changed nothing.
//!
//! Responses that would hold a secret in clear are never stored: `POST /api-keys`
//! (`plaintext_key`) and `POST /webhooks` without a `secret` (the generated one) refuse a
//! key with 400, as does `POST /maintenance/rotate-encryption-key` (its keyring switch
//! cannot wait for a request-wide commit). `POST /webhooks/:id/test` changes nothing but
//! an audit entry and sends HTTP: it runs outside the key's transaction, and its response
//! is stored afterwards.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use async_trait::async_trait;
use futures_util::future::LocalBoxFuture;
use stratum_core::{Caller, StoreError};

use crate::error::ApiError;
use crate::AppState;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed response.
pub const REPLAYED: &str = "Idempotent-Replayed";

/// A response stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// hex SHA-256 of method, path and body of the first request.
    pub fingerprint: String,
    /// Its status.
    pub status: u16,
    /// Its body.
    pub body: String,
}

/// What a key lookup found.
pub enum KeyLookup {
    /// Another request with this key holds it now.
    InProgress,
    /// The key was used before (within its time to live).
    Stored(StoredResponse),
    /// A new key: the request runs on this transaction.
    New(Box<dyn KeyTransaction>),
}

/// What the request's handlers answer.
pub type Handled = Result<ServiceResponse<BoxBody>, actix_web::Error>;

/// The storage port of idempotency keys: a request with a new key runs inside one storage
/// transaction that holds the key's lock, and the key with its response is written into
/// that transaction just before it commits.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Opens the transaction for `(principal, key)` and looks the key up.
    async fn begin(&self, principal: &str, key: &str) -> Result<KeyLookup, StoreError>;
}

/// The open transaction of a request with a new key; holds the key's lock. Dropped without
/// `commit` or `rollback`, it must roll back.
#[async_trait]
pub trait KeyTransaction: Send {
    /// Runs `work` (the request's handlers) with every storage write it makes inside this
    /// transaction.
    fn run<'a>(&'a self, work: LocalBoxFuture<'a, Handled>) -> LocalBoxFuture<'a, Handled>;

    /// Stores the key with its response and commits everything the request did; answers
    /// the response the key now holds. That is `response`, unless the commit's answer was
    /// lost and the storage, asked afterwards, holds another response to the same request
    /// under the key (a retry committed instead): the request is answered with that one.
    /// An error means nothing the request did took effect.
    async fn commit(
        self: Box<Self>,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<StoredResponse, StoreError>;

    /// Rolls back everything the request did; the key stays unused.
    async fn rollback(self: Box<Self>);
}

/// 1–255 visible ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Why a route refuses a key, if it does.
fn refused(path: &str, body: &[u8]) -> Option<&'static str> {
    match path {
        "/api/v1/api-keys" => {
            Some("POST /api-keys returns a secret once and does not take an Idempotency-Key")
        }
        "/api/v1/maintenance/rotate-encryption-key" => {
            Some("POST /maintenance/rotate-encryption-key does not take an Idempotency-Key")
        }
        "/api/v1/webhooks" => {
            let has_secret = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("secret").map(|s| !s.is_null()))
                .unwrap_or(false);
            (!has_secret).then_some(
                "with an Idempotency-Key, POST /webhooks needs a `secret`: a generated one is never stored",
            )
        }
        _ => None,
    }
}

/// Routes whose work must not run inside the key's transaction (they make HTTP calls).
fn outside_tx(path: &str) -> bool {
    path.starts_with("/api/v1/webhooks/") && path.ends_with("/test")
}

fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut input = Vec::with_capacity(body.len() + path_and_query.len() + 16);
    input.extend_from_slice(method.as_str().as_bytes());
    input.push(b'\n');
    input.extend_from_slice(path_and_query.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(body);
    stratum_crypto::sha256_hex(&input)
}

fn answer(req: ServiceRequest, e: ApiError) -> ServiceResponse<BoxBody> {
    req.error_response(e)
}

/// The middleware; runs after authentication.
pub async fn idempotency(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(raw) = req.headers().get(HEADER).map(|v| v.as_bytes().to_vec()) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if req.method() != Method::POST {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    if !valid_key(&raw) {
        return Ok(answer(
            req,
            ApiError::field("Idempotency-Key", "must be 1-255 visible ASCII characters"),
        ));
    }
    let key = String::from_utf8_lossy(&raw).into_owned();
    let Some(principal) = req.extensions().get::<Caller>().map(|c| c.actor.id()) else {
        return Ok(answer(req, ApiError::unauthorized()));
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(answer(req, ApiError::unavailable()));
    };
    let payload = match req.extract::<web::Payload>().await {
        Ok(p) => p,
        Err(e) => return Ok(req.error_response(e)),
    };
    let body = match crate::extract::read_body(payload).await {
        Ok(b) => b,
        Err(e) => return Ok(answer(req, e)),
    };
    req.set_payload(actix_web::dev::Payload::from(body.clone()));
    let path = req.path().to_owned();
    if let Some(why) = refused(&path, &body) {
        return Ok(answer(req, ApiError::field("Idempotency-Key", why)));
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let print = fingerprint(req.method(), &path_and_query, &body);

    let tx = match state.idempotency.begin(&principal, &key).await {
        Err(e) => return Ok(answer(req, e.into())),
        Ok(KeyLookup::InProgress) => {
            return Ok(answer(
                req,
                ApiError::conflict(
                    "IDEMPOTENCY_KEY_IN_PROGRESS",
                    "a request with this Idempotency-Key is still running",
                ),
            ))
        }
        Ok(KeyLookup::Stored(stored)) => {
            if stored.fingerprint != print {
                return Ok(answer(
                    req,
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "IDEMPOTENCY_KEY_REUSED",
                        "this Idempotency-Key was used with another method, path or body",
                    ),
                ));
            }
            return Ok(req.into_response(replay(stored)));
        }
        Ok(KeyLookup::New(tx)) => tx,
    };

    let work: LocalBoxFuture<'_, Handled> =
        Box::pin(async move { Ok(next.call(req).await?.map_into_boxed_body()) });
    let res = if outside_tx(&path) {
        work.await
    } else {
        tx.run(work).await
    };
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            tx.rollback().await;
            return Err(e);
        }
    };
    let (http_req, res) = res.into_parts();
    let status = res.status();
    let (res, body) = res.into_parts();
    let bytes = match actix_web::body::to_bytes(body).await {
        Ok(b) => b,
        Err(_) => {
            tx.rollback().await;
            let e = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error",
            );
            return Ok(ServiceResponse::new(
                http_req,
                actix_web::ResponseError::error_response(&e),
            ));
        }
    };
    if !status.is_success() {
        tx.rollback().await;
        return Ok(ServiceResponse::new(
            http_req,
            res.set_body(BoxBody::new(bytes)),
        ));
    }
    let stored = StoredResponse {
        fingerprint: print,
        status: status.as_u16(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    match tx.commit(&principal, &key, &stored).await {
        Err(e) => {
            // Nothing the request did was committed.
            let e: ApiError = e.into();
            Ok(ServiceResponse::new(
                http_req,
                actix_web::ResponseError::error_response(&e),
            ))
        }
        Ok(held) if held == stored => Ok(ServiceResponse::new(
            http_req,
            res.set_body(BoxBody::new(bytes)),
        )),
        // The commit's answer was lost and this request's work did not take effect, but a
        // retry with the key did: answer what the key holds, as a replay would.
        Ok(held) => Ok(ServiceResponse::new(http_req, replay(held))),
    }
}

/// The answer of a stored response.
fn replay(stored: StoredResponse) -> HttpResponse {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    HttpResponse::build(status)
        .content_type("application/json")
        .insert_header((REPLAYED, "true"))
        .body(stored.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert!(valid_key(b"a"));
        assert!(valid_key(&[b'~'; 255]));
        assert!(valid_key(b"order-42:retry/1"));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; 256]));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(b"tab\t"));
        assert!(!valid_key("caf\u{e9}".as_bytes()));
        assert!(!valid_key(b"nul\0"));
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let a = fingerprint(&Method::POST, "/api/v1/tenants", b"{}");
        assert_eq!(a, fingerprint(&Method::POST, "/api/v1/tenants", b"{}"));
        assert_ne!(a, fingerprint(&Method::PUT, "/api/v1/tenants", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/v1/tenants?x=1", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/v1/tenants", b"{ }"));
    }

    #[test]
    fn routes_that_would_store_a_secret_refuse_a_key() {
        assert!(refused("/api/v1/api-keys", b"{}").is_some());
        assert!(refused("/api/v1/maintenance/rotate-encryption-key", b"{}").is_some());
        assert!(refused("/api/v1/webhooks", br#"{"url":"x"}"#).is_some());
        assert!(refused("/api/v1/webhooks", br#"{"url":"x","secret":null}"#).is_some());
        assert!(refused("/api/v1/webhooks", br#"{"url":"x","secret":"s"}"#).is_none());
        assert!(refused("/api/v1/tenants", b"{}").is_none());
        assert!(outside_tx("/api/v1/webhooks/1/test"));
        assert!(!outside_tx("/api/v1/webhooks/1/replay"));
    }
}
