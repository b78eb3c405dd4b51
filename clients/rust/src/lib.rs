//! Client for the Stratum API.
//!
//! The [`generated`] module is generated at build time by progenitor from the OpenAPI document
//! the server serves: one builder per operation (`client.raw().create_tenant().body(..)`).
//! [`Stratum`] adds what callers need on top of it:
//!
//! - typed errors ([`Error`], [`ApiError`]) with the server's `code`, `message`, `details` and
//!   the request id; `412 PRECONDITION_FAILED` is [`Error::PreconditionFailed`];
//! - retries of connection errors, `429` (honouring `Retry-After`) and `503`, with exponential
//!   backoff; every `POST` carries one `Idempotency-Key` generated for the call, sent
//!   unchanged on each retry, so a retried `POST` creates at most once;
//! - streams over the cursor-paged lists ([`Stratum::audit_logs`], [`Stratum::deliveries`],
//!   [`Stratum::tenants`]) that yield every entry exactly once;
//! - `If-Match` on conditional updates ([`Stratum::update_tenant`], or `.if_match(..)` on any
//!   generated builder inside [`Stratum::call`]).
//!
//! ```no_run
//! # async fn quickstart(api_key: &str) -> Result<(), stratum_client::Error> {
//! use futures::TryStreamExt;
//! use stratum_client::{types, AuditLogQuery, Error, Stratum};
//!
//! let s = Stratum::new("http://127.0.0.1:3001", api_key)?;
//! let acme = s.create_tenant(types::CreateTenant::builder().name("Acme").slug("acme").try_into().unwrap()).await?;
//! let (_, version) = s.get_tenant(acme.id).await?;
//! let patch = types::PatchTenant::builder().name(Some("Acme Inc".parse().unwrap())).try_into().unwrap();
//! match s.update_tenant(acme.id, patch, version.as_deref()).await {
//!     Err(Error::PreconditionFailed(e)) => eprintln!("changed meanwhile ({:?})", e.request_id),
//!     other => { other?; }
//! }
//! let mut entries = std::pin::pin!(s.audit_logs(AuditLogQuery { tenant_id: Some(acme.id), ..Default::default() }));
//! while let Some(entry) = entries.try_next().await? { println!("{} {}", entry.created_at, entry.action); }
//! # Ok(()) }
//! ```
//!
//! Receivers verify deliveries with the Standard Webhooks library, re-exported as
//! [`webhooks`]:
//!
//! ```no_run
//! # fn check(body: &[u8], headers: &http::HeaderMap) -> Result<(), stratum_client::webhooks::WebhookError> {
//! let wh = stratum_client::webhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! wh.verify(body, headers)?; // checks webhook-id, webhook-timestamp and webhook-signature
//! # Ok(()) }
//! ```

use std::{future::Future, time::Duration};

use futures::{Stream, TryStreamExt};
use progenitor_client::Error as RawError;
pub use progenitor_client::ResponseValue;
use reqwest::{header::HeaderMap, StatusCode};
pub use standardwebhooks as webhooks;

/// The client generated from the OpenAPI document.
#[allow(clippy::all, missing_docs, unused, rustdoc::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use generated::types;
use types::{AuditEntry, Delivery, ErrorBody, Tenant};

/// An error answer of the API: `{"error": {code, message, details}}` and the request id.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable `SCREAMING_SNAKE` code, e.g. `VALIDATION_ERROR`.
    pub code: String,
    /// Human text.
    pub message: String,
    /// Field-level problems, when the server gives them.
    pub details: Vec<types::FieldError>,
    /// The request id (`X-Request-Id`), to quote when reporting a problem.
    pub request_id: Option<String>,
    /// `Retry-After` of a 429 or 503, when given.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request {id})")?;
        }
        Ok(())
    }
}

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `412 PRECONDITION_FAILED`: the `If-Match` version is no longer current; nothing changed.
    #[error("precondition failed: {0}")]
    PreconditionFailed(ApiError),
    /// Any other error answer of the API.
    #[error("{0}")]
    Api(ApiError),
    /// The server could not be reached, or the connection broke (after the retries).
    #[error("connection error: {0}")]
    Connection(String),
    /// The request could not be built (a value the API does not accept), or the answer was not
    /// what the API documents.
    #[error("invalid request or response: {0}")]
    Invalid(String),
}

impl Error {
    /// The API error, for [`Error::Api`] and [`Error::PreconditionFailed`].
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) | Error::PreconditionFailed(e) => Some(e),
            _ => None,
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn api_error(status: StatusCode, headers: &HeaderMap, body: Option<ErrorBody>) -> Error {
    let retry_after = header(headers, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let request_id = header(headers, "x-request-id");
    let e = match body {
        Some(b) => ApiError {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            details: b.error.details,
            request_id: request_id.or(b.error.request_id),
            retry_after,
        },
        None => ApiError {
            status: status.as_u16(),
            code: "UNEXPECTED_RESPONSE".into(),
            message: format!("unexpected {status} answer"),
            details: Vec::new(),
            request_id,
            retry_after,
        },
    };
    if status == StatusCode::PRECONDITION_FAILED {
        Error::PreconditionFailed(e)
    } else {
        Error::Api(e)
    }
}

async fn convert_error(e: RawError<ErrorBody>) -> Error {
    match e {
        RawError::ErrorResponse(rv) => {
            let status = rv.status();
            let headers = rv.headers().clone();
            api_error(status, &headers, Some(rv.into_inner()))
        }
        RawError::UnexpectedResponse(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.ok();
            let parsed = body.and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok());
            api_error(status, &headers, parsed)
        }
        RawError::CommunicationError(e) | RawError::ResponseBodyError(e) => {
            Error::Connection(error_chain(&e))
        }
        RawError::InvalidUpgrade(e) => Error::Invalid(e.to_string()),
        RawError::InvalidRequest(s) | RawError::Custom(s) => Error::Invalid(s),
        RawError::InvalidResponsePayload(_, e) => Error::Invalid(e.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How a call is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub max_retries: u32,
    /// The first backoff; it doubles with each retry (with ±20 % jitter).
    pub base_delay: Duration,
    /// Cap on one backoff, and on a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let jitter = rand::random_range(0.8..1.2);
        exp.mul_f64(jitter).min(self.max_delay)
    }
}

/// Whether a call may be repeated after a connection error, when it is not known whether the
/// server received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `GET`, `PUT`, `PATCH`, `DELETE`, and `POST` with an `Idempotency-Key`: a repeat
    /// changes nothing more than the first request.
    Safe,
    /// A `POST` that cannot carry an `Idempotency-Key` (`POST /api-keys`, `POST /webhooks`
    /// without a `secret`, key rotation): retried only on `429` and `503`, which changed nothing.
    Unsafe,
}

/// The Stratum client.
#[derive(Debug, Clone)]
pub struct Stratum {
    raw: generated::Client,
    retry: RetryPolicy,
}

/// Filters of [`Stratum::audit_logs`].
#[derive(Debug, Clone, Default)]
pub struct AuditLogQuery {
    /// Entries of this tenant.
    pub tenant_id: Option<uuid::Uuid>,
    /// Entries with this action (e.g. `tenant.created`).
    pub action: Option<String>,
    /// Entries of this resource type.
    pub resource_type: Option<String>,
    /// Entries by this actor.
    pub actor_id: Option<String>,
    /// Entries at or after this time.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries before this time.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries per request (1–100; the server's default when unset).
    pub page_size: Option<u32>,
}

impl Stratum {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:3001`), sending `api_key`.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, Error> {
        let mut headers = HeaderMap::new();
        let mut key = reqwest::header::HeaderValue::from_str(api_key)
            .map_err(|_| Error::Invalid("the API key is not a valid header value".into()))?;
        key.set_sensitive(true);
        headers.insert("x-api-key", key);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Self::with_client(base_url, http))
    }

    /// A client over a `reqwest::Client` of the caller's (which must send the API key).
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            raw: generated::Client::new_with_client(base_url.trim_end_matches('/'), http),
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The generated client, for calls without retries.
    pub fn raw(&self) -> &generated::Client {
        &self.raw
    }

    /// Runs one operation with the retry policy. `op` builds the request anew for each attempt
    /// from the generated client and the call's idempotency key (one per call: pass it to
    /// `.idempotency_key(..)` of a `POST`, ignore it otherwise).
    ///
    /// ```no_run
    /// # async fn f(s: &stratum_client::Stratum) -> Result<(), stratum_client::Error> {
    /// use stratum_client::Replay;
    /// let created = s
    ///     .call(Replay::Safe, |c, key| {
    ///         c.create_tenant()
    ///             .idempotency_key(key)
    ///             .body_map(|b| b.name("Acme").slug("acme"))
    ///             .send()
    ///     })
    ///     .await?;
    /// println!("{}", created.id);
    /// # Ok(()) }
    /// ```
    pub async fn call<'a, T, F, Fut>(
        &'a self,
        replay: Replay,
        mut op: F,
    ) -> Result<ResponseValue<T>, Error>
    where
        F: FnMut(&'a generated::Client, &str) -> Fut,
        Fut: Future<Output = Result<ResponseValue<T>, RawError<ErrorBody>>> + 'a,
    {
        let key = uuid::Uuid::new_v4().to_string();
        let mut retry = 0;
        loop {
            let err = match op(&self.raw, &key).await {
                Ok(v) => return Ok(v),
                Err(e) => convert_error(e).await,
            };
            let retryable = match &err {
                Error::Connection(_) => replay == Replay::Safe,
                Error::Api(a) => a.status == 429 || a.status == 503,
                _ => false,
            };
            if !retryable || retry >= self.retry.max_retries {
                return Err(err);
            }
            let wait = match err.api().and_then(|a| a.retry_after) {
                Some(after) => after.min(self.retry.max_delay),
                None => self.retry.backoff(retry),
            };
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    /// `POST /tenants`.
    pub async fn create_tenant(&self, body: types::CreateTenant) -> Result<Tenant, Error> {
        self.call(Replay::Safe, |c, key| {
            c.create_tenant()
                .idempotency_key(key)
                .body(body.clone())
                .send()
        })
        .await
        .map(ResponseValue::into_inner)
    }

    /// `GET /tenants/{id}` with its version (the `ETag` to pass as `if_match`).
    pub async fn get_tenant(&self, id: uuid::Uuid) -> Result<(Tenant, Option<String>), Error> {
        let rv = self
            .call(Replay::Safe, |c, _| c.get_tenant().id(id).send())
            .await?;
        let etag = header(rv.headers(), "etag");
        Ok((rv.into_inner(), etag))
    }

    /// `PATCH /tenants/{id}`; with `if_match`, only while the tenant is at that version
    /// ([`Error::PreconditionFailed`] otherwise). Returns the tenant and its new version.
    pub async fn update_tenant(
        &self,
        id: uuid::Uuid,
        patch: types::PatchTenant,
        if_match: Option<&str>,
    ) -> Result<(Tenant, Option<String>), Error> {
        let rv = self
            .call(Replay::Safe, |c, _| {
                let mut b = c.update_tenant().id(id).body(patch.clone());
                if let Some(v) = if_match {
                    b = b.if_match(v.to_owned());
                }
                b.send()
            })
            .await?;
        let etag = header(rv.headers(), "etag");
        Ok((rv.into_inner(), etag))
    }

    /// `POST /webhooks`. With a `secret` in `body` the call carries an `Idempotency-Key` and is
    /// retried on connection errors; without one the server generates the secret and refuses a
    /// key, so the call is retried only on `429`/`503`.
    pub async fn create_webhook(
        &self,
        body: types::CreateWebhook,
    ) -> Result<types::CreatedWebhook, Error> {
        let keyed = body.secret.is_some();
        let replay = if keyed { Replay::Safe } else { Replay::Unsafe };
        self.call(replay, |c, key| {
            let mut b = c.create_webhook().body(body.clone());
            if keyed {
                b = b.idempotency_key(key);
            }
            b.send()
        })
        .await
        .map(ResponseValue::into_inner)
    }

    /// `PUT /tenants/{id}/config/{key}`.
    pub async fn put_config(
        &self,
        tenant: uuid::Uuid,
        key: &str,
        body: types::PutConfig,
    ) -> Result<types::ConfigEntry, Error> {
        self.call(Replay::Safe, |c, _| {
            c.put_config().id(tenant).key(key).body(body.clone()).send()
        })
        .await
        .map(ResponseValue::into_inner)
    }

    /// Every audit entry matching `query`, newest first, each exactly once (`GET /audit-logs`,
    /// following `X-Next-Cursor`).
    pub fn audit_logs(
        &self,
        query: AuditLogQuery,
    ) -> impl Stream<Item = Result<AuditEntry, Error>> + '_ {
        self.cursor_stream(move |this, cursor| {
            let q = query.clone();
            async move {
                let rv = this
                    .call(Replay::Safe, |c, _| {
                        let mut b = c.list_audit_logs();
                        if let Some(v) = q.tenant_id {
                            b = b.tenant_id(v);
                        }
                        if let Some(v) = &q.action {
                            b = b.action(v.clone());
                        }
                        if let Some(v) = &q.resource_type {
                            b = b.resource_type(v.clone());
                        }
                        if let Some(v) = &q.actor_id {
                            b = b.actor_id(v.clone());
                        }
                        if let Some(v) = q.from {
                            b = b.from(v);
                        }
                        if let Some(v) = q.to {
                            b = b.to(v);
                        }
                        if let Some(v) = q
                            .page_size
                            .and_then(|v| std::num::NonZeroU64::new(u64::from(v)))
                        {
                            b = b.limit(v);
                        }
                        if let Some(v) = cursor {
                            b = b.cursor(v);
                        }
                        b.send()
                    })
                    .await?;
                let next = next_cursor(rv.headers())?;
                Ok((rv.into_inner(), next))
            }
        })
    }

    /// Every delivery of a webhook (optionally of one status), newest first, each exactly once.
    pub fn deliveries(
        &self,
        webhook: uuid::Uuid,
        status: Option<types::DeliveryStatus>,
        page_size: Option<u32>,
    ) -> impl Stream<Item = Result<Delivery, Error>> + '_ {
        self.cursor_stream(move |this, cursor| async move {
            let rv = this
                .call(Replay::Safe, |c, _| {
                    let mut b = c.list_webhook_deliveries().id(webhook);
                    if let Some(s) = status {
                        b = b.status(s);
                    }
                    if let Some(v) = page_size.and_then(|v| std::num::NonZeroU64::new(u64::from(v)))
                    {
                        b = b.limit(v);
                    }
                    if let Some(v) = cursor {
                        b = b.cursor(v);
                    }
                    b.send()
                })
                .await?;
            let next = next_cursor(rv.headers())?;
            Ok((rv.into_inner(), next))
        })
    }

    /// Every tenant the key can see, each exactly once (`GET /tenants`, following
    /// `next_cursor`).
    pub fn tenants(
        &self,
        page_size: Option<u32>,
    ) -> impl Stream<Item = Result<Tenant, Error>> + '_ {
        self.cursor_stream(move |this, cursor| async move {
            let page = this
                .call(Replay::Safe, |c, _| {
                    let mut b = c.list_tenants();
                    if let Some(v) = page_size.and_then(|v| std::num::NonZeroU64::new(u64::from(v)))
                    {
                        b = b.limit(v);
                    }
                    if let Some(v) = cursor {
                        b = b.cursor(v);
                    }
                    b.send()
                })
                .await?
                .into_inner();
            let next = if page.has_more {
                page.next_cursor
            } else {
                None
            };
            Ok((page.data, next))
        })
    }

    fn cursor_stream<'a, T, F, Fut>(&'a self, fetch: F) -> impl Stream<Item = Result<T, Error>> + 'a
    where
        T: 'a,
        F: Fn(&'a Self, Option<uuid::Uuid>) -> Fut + 'a,
        Fut: Future<Output = Result<(Vec<T>, Option<uuid::Uuid>), Error>> + 'a,
    {
        enum State {
            Start,
            Next(uuid::Uuid),
            Done,
        }
        let pages = futures::stream::try_unfold(State::Start, move |state| {
            let cursor = match state {
                State::Start => None,
                State::Next(c) => Some(c),
                State::Done => return futures::future::Either::Left(futures::future::ok(None)),
            };
            let fut = fetch(self, cursor);
            futures::future::Either::Right(async move {
                let (items, next) = fut.await?;
                let state = match next {
                    Some(c) if !items.is_empty() => State::Next(c),
                    _ => State::Done,
                };
                Ok(Some((items, state)))
            })
        });
        pages
            .map_ok(|items| futures::stream::iter(items.into_iter().map(Ok::<T, Error>)))
            .try_flatten()
    }
}

fn next_cursor(headers: &HeaderMap) -> Result<Option<uuid::Uuid>, Error> {
    header(headers, "x-next-cursor")
        .map(|v| {
            v.parse()
                .map_err(|_| Error::Invalid(format!("X-Next-Cursor is not a UUID: {v}")))
        })
        .transpose()
}
