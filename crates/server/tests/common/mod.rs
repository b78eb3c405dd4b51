//! In-process API tests: the real application over a fresh PostgreSQL database.
#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    reason = "each test binary uses a different part of the harness"
)]

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::test::TestRequest;
use actix_web::web;
use serde_json::Value;
use stratum_api::AppState;
use stratum_crypto::{Keyring, SharedKeyring};
use stratum_testkit::TestDb;

pub use stratum_testkit::sql;

/// The application over a harness's state, ready for [`call`]: `let app = app!(h);`.
macro_rules! app {
    ($h:expr) => {
        actix_web::test::init_service(stratum_api::app($h.state.clone())).await
    };
}
pub(crate) use app;

pub const GET: Method = Method::GET;
pub const POST: Method = Method::POST;
pub const PUT: Method = Method::PUT;
pub const PATCH: Method = Method::PATCH;
pub const DELETE: Method = Method::DELETE;

/// The `id` of a resource in a response body.
pub fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}

/// The bootstrap admin key of every test app.
pub const ADMIN: &str = "sk_test_bootstrap_admin_key_0123456789abcdef";
/// The encryption key of every test app.
pub const ENCRYPTION_KEY: &str = "test-encryption-key-0123456789abcdef";

/// A database and the application state over it.
pub struct Harness {
    pub db: TestDb,
    pub state: web::Data<AppState>,
    /// The pool the state's adapters use.
    pub pool: stratum_postgres::Pool,
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A harness whose state `adjust` may change before it is shared.
pub async fn harness_with(adjust: impl FnOnce(&mut AppState)) -> Harness {
    harness_with_args(|_| {}, adjust).await
}

/// A harness built from webhook settings `args` may change, then state `adjust` may change.
pub async fn harness_with_args(
    args: impl FnOnce(&mut stratum_server::config::WebhookArgs),
    adjust: impl FnOnce(&mut AppState),
) -> Harness {
    harness_over(args, |_, state| adjust(state)).await
}

/// A harness whose state `adjust` may change knowing its database (e.g. to give an adapter
/// a pool of its own), before it is shared.
pub async fn harness_with_db(adjust: impl FnOnce(&TestDb, &mut AppState)) -> Harness {
    harness_over(|_| {}, adjust).await
}

async fn harness_over(
    args: impl FnOnce(&mut stratum_server::config::WebhookArgs),
    adjust: impl FnOnce(&TestDb, &mut AppState),
) -> Harness {
    let db = TestDb::new().await;
    let pool = stratum_postgres::connect(&db.url, &Default::default()).unwrap();
    let keyring = SharedKeyring::new(Keyring::from_env_values(ENCRYPTION_KEY, None).unwrap());
    let mut webhook = stratum_server::config::WebhookArgs::from_env().unwrap();
    webhook.allow_private_targets = true;
    webhook.timeout_ms = 3000;
    args(&mut webhook);
    let out = stratum_server::wiring::outbound(&webhook).unwrap();
    let settings = stratum_server::wiring::ApiSettings {
        admin_api_key: Some(ADMIN.to_owned()),
        ..Default::default()
    };
    let metrics = std::sync::Arc::new(stratum_api::metrics::Metrics::new());
    let mut state =
        stratum_server::wiring::app_state(pool.clone(), keyring, out, metrics, settings);
    adjust(&db, &mut state);
    Harness {
        db,
        state: web::Data::new(state),
        pool,
    }
}

/// A response, decoded.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: actix_web::http::header::HeaderMap,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// An application under test, as `app!` builds it.
pub trait TestApp<B>:
    Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>
{
}

impl<S, B> TestApp<B> for S where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>
{
}

/// Sends one request; any 5xx fails the test.
pub async fn call<S: TestApp<B>, B: MessageBody>(
    app: &S,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let reply = call_any(app, method, path, key, body).await;
    assert!(
        !reply.status.is_server_error(),
        "{path} answered {}: {}",
        reply.status,
        reply.body
    );
    reply
}

/// Sends one request, whatever it answers.
pub async fn call_any<S: TestApp<B>, B: MessageBody>(
    app: &S,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = TestRequest::default().method(method).uri(path);
    if let Some(k) = key {
        req = req.insert_header(("X-API-Key", k));
    }
    if let Some(b) = body {
        req = req.set_json(b);
    }
    send(app, req.to_request()).await
}

/// Sends a request built by the test, whatever it answers; an empty or non-JSON body is
/// `Null`.
pub async fn send<S: TestApp<B>, B: MessageBody>(app: &S, req: actix_http::Request) -> Reply {
    let res = actix_web::test::call_service(app, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = actix_web::test::read_body(res).await;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Reply {
        status,
        body,
        headers,
    }
}

/// Sends raw bytes with a content type.
pub async fn call_raw<S: TestApp<B>, B: MessageBody>(
    app: &S,
    method: Method,
    path: &str,
    key: &str,
    ctype: &str,
    bytes: Vec<u8>,
) -> Reply {
    let req = TestRequest::default()
        .method(method)
        .uri(path)
        .insert_header(("X-API-Key", key))
        .insert_header(("Content-Type", ctype))
        .set_payload(bytes)
        .to_request();
    send(app, req).await
}
