//! The webhook registry and the dead-letter queue: what the REST surface does with
//! webhooks and deliveries.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Value};
use stratum_core::timefmt::rfc3339;
use stratum_core::{
    new_id, Caller, Clock, EventCatalogue, EventType, Limit, PageError, Precondition, Scope,
    StoreError, TenantDirectory, TenantDirectoryExt, TenantPath, KEY_RETRIES, REDACTED,
};
use stratum_crypto::{generate_whsec, SharedKeyring};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    build_request, validate_rate_limit, Breaker, BuildError, ClaimedDelivery, Delivery,
    DeliveryClient, DeliveryOrdering, DeliveryStatus, DisabledReason, Subscriptions, UrlGuard,
    Webhook, WebhookError, WebhookUrl, WEBHOOK_TEST,
};

type Result<T> = std::result::Result<T, WebhookError>;

/// Counts over the deliveries a caller can see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryStats {
    /// All.
    pub total: i64,
    /// Waiting for an attempt.
    pub pending: i64,
    /// Delivered.
    pub success: i64,
    /// Dead-lettered.
    pub failed: i64,
}

/// The webhook a failed delivery belongs to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookRef {
    /// Id.
    pub id: Uuid,
    /// Target.
    pub url: String,
    /// Owner tenant.
    pub tenant_id: Option<Uuid>,
}

/// The event a failed delivery carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRef {
    /// Id.
    pub id: Uuid,
    /// Type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Tenant.
    pub tenant_id: Option<Uuid>,
    /// Payload.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Value,
    /// When it happened.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A delivery with its webhook and event joined in (a dead-letter queue entry, or one
/// delivery read on its own).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedDelivery {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its webhook.
    pub webhook: WebhookRef,
    /// Its event.
    pub event: EventRef,
}

/// One recorded attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryAttempt {
    /// Id.
    pub id: Uuid,
    /// The delivery.
    pub delivery_id: Uuid,
    /// 1 for the first attempt, counting up.
    pub attempt: i32,
    /// The receiver's HTTP status, when one came back.
    pub status_code: Option<i32>,
    /// How long the attempt took.
    pub duration_ms: i32,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// A capped excerpt of the receiver's answer.
    pub response_body: Option<String>,
    /// When it was made.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Figures over a webhook's recent attempts and its queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookHealth {
    /// The webhook.
    pub webhook_id: Uuid,
    /// The window the attempt figures cover, in seconds, ending now.
    pub window_seconds: i64,
    /// Attempts in the window.
    pub attempts: i64,
    /// Attempts in the window that got a 2xx.
    pub successes: i64,
    /// `successes / attempts`, 0-1; null without attempts.
    pub success_rate: Option<f64>,
    /// Median attempt duration in the window; null without attempts.
    pub p50_latency_ms: Option<f64>,
    /// The error of the latest failed attempt (ever), if any.
    pub last_error: Option<String>,
    /// When that failed attempt was made.
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub last_error_at: Option<OffsetDateTime>,
    /// Deliveries waiting for an attempt.
    pub queue_depth: i64,
    /// The circuit breaker, shared by every process.
    pub breaker: Breaker,
}

/// What the store counts for [`WebhookHealth`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthFigures {
    /// Attempts since the window start.
    pub attempts: i64,
    /// Of those, 2xx answers.
    pub successes: i64,
    /// Median duration of those attempts.
    pub p50_latency_ms: Option<f64>,
    /// Latest failed attempt's error and time.
    pub last_error: Option<(String, OffsetDateTime)>,
    /// Pending deliveries.
    pub queue_depth: i64,
    /// The webhook's circuit breaker.
    pub breaker: Breaker,
}

/// The window of [`WebhookHealth`]: the last hour.
pub const HEALTH_WINDOW_SECONDS: i64 = 3600;

/// One time bucket of a [`HealthSeries`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthBucket {
    /// Start of the bucket (inclusive); it ends `bucket_seconds` later (exclusive).
    #[serde(with = "rfc3339")]
    pub start: OffsetDateTime,
    /// Attempts made in the bucket.
    pub attempts: i64,
    /// Of those, the ones that got a 2xx.
    pub successes: i64,
    /// `successes / attempts`, 0-1; null without attempts.
    pub success_rate: Option<f64>,
    /// Median attempt duration; null without attempts.
    pub p50_latency_ms: Option<f64>,
    /// 99th percentile of the attempt durations; null without attempts.
    pub p99_latency_ms: Option<f64>,
}

/// A webhook's delivery health over time: its attempts in equal buckets, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthSeries {
    /// The webhook.
    pub webhook_id: Uuid,
    /// The window asked for, in seconds, ending now.
    pub window_seconds: i64,
    /// Length of each bucket, in seconds.
    pub bucket_seconds: i64,
    /// Start of the first bucket: bucket boundaries are multiples of `bucket_seconds` since
    /// the Unix epoch, and the last bucket holds now.
    #[serde(with = "rfc3339")]
    pub from: OffsetDateTime,
    /// End of the last bucket (exclusive).
    #[serde(with = "rfc3339")]
    pub until: OffsetDateTime,
    /// Every bucket of `[from, until)`, oldest first, empty ones included (zero attempts).
    pub buckets: Vec<HealthBucket>,
}

/// What the store counts for one [`HealthBucket`].
#[derive(Debug, Clone, PartialEq)]
pub struct BucketFigures {
    /// Start of the bucket.
    pub start: OffsetDateTime,
    /// Attempts in it.
    pub attempts: i64,
    /// Of those, 2xx answers.
    pub successes: i64,
    /// Median duration.
    pub p50_latency_ms: Option<f64>,
    /// 99th percentile duration.
    pub p99_latency_ms: Option<f64>,
}

/// Default window of [`HealthSeries`]: a day.
pub const SERIES_DEFAULT_WINDOW_SECONDS: i64 = 86_400;
/// Longest window of [`HealthSeries`]: seven days.
pub const SERIES_MAX_WINDOW_SECONDS: i64 = 7 * 86_400;
/// Default bucket of [`HealthSeries`]: an hour.
pub const SERIES_DEFAULT_BUCKET_SECONDS: i64 = 3_600;
/// Shortest bucket (and window) of [`HealthSeries`]: a minute.
pub const SERIES_MIN_BUCKET_SECONDS: i64 = 60;
/// Most buckets in one [`HealthSeries`].
pub const SERIES_MAX_BUCKETS: i64 = 1_000;

/// The webhooks table.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Inserts. `TenantNotFound` when its tenant is gone.
    async fn create(
        &self,
        webhook: Webhook,
        secret_encrypted: String,
        journal: stratum_core::Journal,
    ) -> Result<()>;

    /// One webhook with its tenant's path; `None` when unknown.
    async fn get(
        &self,
        id: Uuid,
    ) -> std::result::Result<Option<(Webhook, Option<TenantPath>)>, StoreError>;

    /// The encrypted secret of a webhook; `None` when unknown.
    async fn secret(&self, id: Uuid) -> std::result::Result<Option<String>, StoreError>;

    /// Webhooks newest first: of tenants under `subtree` when given (global ones
    /// excluded then), and of `tenant_id` only when given.
    async fn list(
        &self,
        subtree: Option<TenantPath>,
        tenant_id: Option<Uuid>,
    ) -> std::result::Result<Vec<Webhook>, StoreError>;

    /// Writes url, events, active, description, `updated_at` and, when given, the secret,
    /// and bumps the version, while the stored version is `expected`. `Stale` when it is
    /// another; `NotFound` when gone. Returns the new version.
    async fn update(
        &self,
        webhook: Webhook,
        expected: i64,
        secret_encrypted: Option<String>,
        journal: stratum_core::Journal,
    ) -> Result<i64>;

    /// Makes `secret_encrypted` the current secret while the stored version is `expected`;
    /// the secret it replaces (read in the same transaction) keeps signing until
    /// `previous_expires_at` (dropped at once when that is not after `now`). Previous
    /// secrets that expired by `now` are dropped and at most
    /// [`MAX_PREVIOUS_SECRETS`] are kept, the oldest going first. `Stale` when the version
    /// is another; `NotFound` when gone. Returns the webhook as written.
    async fn rotate_secret(
        &self,
        id: Uuid,
        expected: i64,
        secret_encrypted: String,
        previous_expires_at: OffsetDateTime,
        now: OffsetDateTime,
        journal: stratum_core::Journal,
    ) -> Result<Webhook>;

    /// Deletes it and its deliveries while its version is `expected`. `Stale` when it is
    /// another; `NotFound` when gone.
    async fn delete(&self, id: Uuid, expected: i64, journal: stratum_core::Journal) -> Result<()>;

    /// Writes a journal entry that goes with no change (a test delivery).
    async fn journal(&self, journal: stratum_core::Journal) -> std::result::Result<(), StoreError>;
}

/// Deliveries as the API and the dead-letter queue see them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// A webhook's deliveries newest first, strictly after `cursor`, at most
    /// [`limit.fetch()`](Limit::fetch) of them; `BadCursor` when the cursor names no
    /// delivery of this webhook.
    async fn list_for_webhook(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        cursor: Option<Uuid>,
        limit: Limit,
    ) -> std::result::Result<Vec<Delivery>, PageError>;

    /// Counts over deliveries of webhooks under `subtree` (all when `None`).
    async fn stats(
        &self,
        subtree: Option<TenantPath>,
    ) -> std::result::Result<DeliveryStats, StoreError>;

    /// At most `limit` failed deliveries newest first, joined with webhook and event.
    async fn failed(
        &self,
        subtree: Option<TenantPath>,
        limit: Limit,
    ) -> std::result::Result<Vec<FailedDelivery>, StoreError>;

    /// One delivery with the path of its webhook's tenant; `None` when unknown.
    async fn get(
        &self,
        id: Uuid,
    ) -> std::result::Result<Option<(Delivery, Option<TenantPath>)>, StoreError>;

    /// Attempt figures of one webhook's deliveries since `since`, its latest failed
    /// attempt and its pending count; zeros when it has none (or is unknown).
    async fn health(
        &self,
        webhook_id: Uuid,
        since: OffsetDateTime,
    ) -> std::result::Result<HealthFigures, StoreError>;

    /// One delivery of `webhook_id` joined with its webhook and event; `None` when that
    /// webhook has no such delivery.
    async fn detail(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> std::result::Result<Option<FailedDelivery>, StoreError>;

    /// Attempt figures of one webhook in `buckets` consecutive buckets of `bucket_seconds`
    /// starting at `from`, oldest first, one row per bucket (zeros for an empty one).
    async fn health_series(
        &self,
        webhook_id: Uuid,
        from: OffsetDateTime,
        bucket_seconds: i64,
        buckets: i64,
    ) -> std::result::Result<Vec<BucketFigures>, StoreError>;

    /// The attempts of one delivery of `webhook_id`, oldest first; `None` when that
    /// webhook has no such delivery.
    async fn attempts(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> std::result::Result<Option<Vec<DeliveryAttempt>>, StoreError>;

    /// Puts one failed delivery back to pending, attempts cleared, due now.
    /// `DeliveryNotFailed` when it is not failed; `DeliveryNotFound` when gone.
    async fn retry(&self, id: Uuid, journal: stratum_core::Journal) -> Result<()>;

    /// Puts every failed delivery of webhooks under `subtree` back to pending; the
    /// journal's after-state gets the count. Returns the count.
    async fn retry_all(
        &self,
        subtree: Option<TenantPath>,
        journal: stratum_core::Journal,
    ) -> Result<u64>;
}

/// What `POST /webhooks` carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewWebhook {
    /// Target.
    pub url: String,
    /// Owner tenant (`None`: global).
    pub tenant_id: Option<Uuid>,
    /// Event names.
    pub events: Vec<String>,
    /// Signing secret; generated when absent.
    pub secret: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Most attempts per second (1-10,000); `None`: no limit.
    pub rate_limit_per_second: Option<u32>,
    /// `None`: unordered.
    pub ordering: Option<DeliveryOrdering>,
}

/// What `PATCH /webhooks/:id` carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookPatch {
    /// New target.
    pub url: Option<String>,
    /// New events.
    pub events: Option<Vec<String>>,
    /// New secret.
    pub secret: Option<String>,
    /// Enable or disable.
    pub active: Option<bool>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New rate limit (`Some(None)` removes it).
    pub rate_limit_per_second: Option<Option<u32>>,
    /// New ordering; applies to deliveries not yet in flight.
    pub ordering: Option<DeliveryOrdering>,
}

/// What `POST /webhooks/:id/rotate-secret` carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretRotation {
    /// The new secret; generated when absent.
    pub secret: Option<String>,
    /// How long the replaced secret keeps signing, in seconds (0-604,800; default 86,400).
    pub grace_period_seconds: Option<u32>,
}

/// Most previous secrets kept signing at once.
pub const MAX_PREVIOUS_SECRETS: usize = 10;
/// Default of [`SecretRotation::grace_period_seconds`]: a day.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u32 = 86_400;
/// Longest grace period: a week.
pub const MAX_GRACE_PERIOD_SECONDS: u32 = 604_800;

/// The answer of a test delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestResult {
    /// A 2xx came back.
    pub success: bool,
    /// The status, when a response came back.
    pub response_code: Option<u16>,
    /// What went wrong, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub error: Option<String>,
}

/// The registry's settings.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS`: allow `http://` (the guard allows the rest).
    pub allow_http: bool,
    /// The events a webhook may subscribe to: those the embedding application emits.
    pub events: EventCatalogue,
}

/// Webhooks and their deliveries.
pub struct WebhookService {
    tenants: Arc<dyn TenantDirectory>,
    webhooks: Arc<dyn WebhookStore>,
    deliveries: Arc<dyn DeliveryStore>,
    guard: Arc<dyn UrlGuard>,
    client: Arc<dyn DeliveryClient>,
    keyring: SharedKeyring,
    clock: Arc<dyn Clock>,
    config: RegistryConfig,
}

fn state_of(w: &Webhook) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
    v["secret"] = Value::String(REDACTED.to_owned());
    v
}

fn check_precondition(precondition: Precondition, current: i64) -> Result<()> {
    Ok(stratum_core::check_precondition(precondition, current)?)
}

fn after_stale(precondition: Precondition, attempt: u32) -> Result<()> {
    Ok(stratum_core::after_stale(precondition, attempt)?)
}

/// The event and audit action of the engine disabling a webhook.
pub const WEBHOOK_DISABLED: EventType = EventType::from_static("webhook.disabled");

/// The events the webhooks domain emits, to register beside the application's own.
pub const EVENTS: [stratum_core::EventSpec; 1] = [stratum_core::EventSpec {
    event_type: WEBHOOK_DISABLED,
    description: "The engine disabled a webhook: its receiver answered 410 Gone, or its circuit breaker stayed open too long. `data` is the webhook (no secret); never delivered to that webhook.",
}];

/// The journal of the engine disabling a webhook (its receiver answered 410 Gone, or its
/// breaker stayed open too long): a `webhook.disabled` entry by the system actor, `before`
/// the webhook as it was, `after` inactive with `reason` at `at`, and the `webhook.disabled`
/// event to the webhook's tenant audience with the disabled webhook (no secret) as data.
pub fn disabled_journal(
    before: &Webhook,
    reason: DisabledReason,
    at: OffsetDateTime,
) -> stratum_core::Journal {
    let mut after = before.clone();
    after.active = false;
    after.disabled_reason = Some(reason);
    after.updated_at = at;
    after.version = before.version + 1;
    let mut after_state = state_of(&after);
    after_state["secret_changed"] = Value::Bool(false);
    let data = serde_json::to_value(&after).unwrap_or(Value::Null);
    Caller::system()
        .journal(WEBHOOK_DISABLED.as_str(), "webhook")
        .resource(before.id)
        .tenant(before.tenant_id)
        .before(Some(state_of(before)))
        .after(Some(after_state))
        .emit(WEBHOOK_DISABLED, data)
}

fn validate_secret(secret: &str) -> Result<()> {
    let n = secret.chars().count();
    if !(16..=255).contains(&n) {
        return Err(WebhookError::Validation {
            field: "secret",
            message: "must be 16-255 characters".into(),
        });
    }
    if secret.starts_with(stratum_crypto::signing::WHSEC_PREFIX)
        && stratum_crypto::signing_key_bytes(secret).is_err()
    {
        return Err(WebhookError::Validation {
            field: "secret",
            message: "a whsec_ secret must be followed by base64".into(),
        });
    }
    Ok(())
}

fn validate_description(d: Option<String>) -> Result<Option<String>> {
    if let Some(text) = &d {
        stratum_core::text::check_str("description", text).map_err(|e| {
            WebhookError::Validation {
                field: "description",
                message: e.message.into(),
            }
        })?;
    }
    match d {
        Some(d) if d.chars().count() > 255 => Err(WebhookError::Validation {
            field: "description",
            message: "must be at most 255 characters".into(),
        }),
        other => Ok(other),
    }
}

impl WebhookService {
    /// Wires the service.
    #[allow(
        clippy::too_many_arguments,
        reason = "a composition-root constructor: one argument per port"
    )]
    pub fn new(
        tenants: Arc<dyn TenantDirectory>,
        webhooks: Arc<dyn WebhookStore>,
        deliveries: Arc<dyn DeliveryStore>,
        guard: Arc<dyn UrlGuard>,
        client: Arc<dyn DeliveryClient>,
        keyring: SharedKeyring,
        clock: Arc<dyn Clock>,
        config: RegistryConfig,
    ) -> Self {
        Self {
            tenants,
            webhooks,
            deliveries,
            guard,
            client,
            keyring,
            clock,
            config,
        }
    }

    async fn checked_url(&self, raw: &str) -> Result<WebhookUrl> {
        let url = WebhookUrl::parse(raw, self.config.allow_http)?;
        self.guard
            .check(&url)
            .await
            .map_err(WebhookError::UrlInvalid)?;
        Ok(url)
    }

    async fn check_tenant(&self, caller: &Caller, tenant_id: Option<Uuid>) -> Result<()> {
        match tenant_id {
            None if caller.actor.is_global() => Ok(()),
            None => Err(WebhookError::Forbidden(
                "a global webhook (no tenant_id) needs a key that is not tenant-scoped".into(),
            )),
            Some(t) => match self.tenants.visible_active(caller, t).await? {
                Some(_) => Ok(()),
                None => Err(WebhookError::TenantNotFound),
            },
        }
    }

    /// Encrypts a secret with the key this process writes with.
    fn seal(&self, secret: &str) -> Result<String> {
        Ok(self
            .keyring
            .get()
            .encrypt_str(secret)
            .map_err(StoreError::internal)?)
    }

    /// Writes with the database's active key from now on (a rotation committed after we
    /// sealed a secret); `KeyUnavailable` when this process does not hold it.
    fn adopt(&self, active_key_id: String) -> Result<()> {
        if self.keyring.adopt(&active_key_id) {
            Ok(())
        } else {
            Err(WebhookError::Store(StoreError::KeyUnavailable {
                key_id: active_key_id,
            }))
        }
    }

    /// A webhook the caller can see.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<Webhook> {
        caller.require(Scope::Read)?;
        match self.webhooks.get(id).await? {
            Some((w, path)) if caller.actor.can_see_owned_by(path.as_ref()) => Ok(w),
            _ => Err(WebhookError::NotFound),
        }
    }

    /// Registers a webhook; returns it and, when the server generated the secret, that secret.
    pub async fn create(
        &self,
        caller: &Caller,
        input: NewWebhook,
    ) -> Result<(Webhook, Option<String>)> {
        caller.require(Scope::Write)?;
        let url = self.checked_url(&input.url).await?;
        let events = Subscriptions::parse(&input.events, &self.config.events)?;
        let description = validate_description(input.description)?;
        if let Some(s) = &input.secret {
            validate_secret(s)?;
        }
        let rate_limit_per_second = input
            .rate_limit_per_second
            .map(validate_rate_limit)
            .transpose()?;
        self.check_tenant(caller, input.tenant_id).await?;
        let (secret, generated) = match input.secret {
            Some(s) => (s, false),
            None => (generate_whsec(), true),
        };
        let mut secret_encrypted = self.seal(&secret)?;
        let now = self.clock.now();
        let webhook = Webhook {
            id: new_id(),
            tenant_id: input.tenant_id,
            url,
            events: events.into_vec(),
            active: true,
            description,
            created_at: now,
            updated_at: now,
            rate_limit_per_second,
            ordering: input.ordering.unwrap_or_default(),
            disabled_reason: None,
            previous_secret_expires_at: None,
            version: 1,
        };
        let journal = caller
            .journal("webhook.created", "webhook")
            .resource(webhook.id)
            .tenant(webhook.tenant_id)
            .after(Some(state_of(&webhook)));
        let mut tries = 0;
        loop {
            match self
                .webhooks
                .create(webhook.clone(), secret_encrypted.clone(), journal.clone())
                .await
            {
                Ok(()) => return Ok((webhook, generated.then_some(secret))),
                Err(WebhookError::Store(StoreError::KeyNotActive { active_key_id }))
                    if tries < KEY_RETRIES =>
                {
                    tries += 1;
                    self.adopt(active_key_id)?;
                    secret_encrypted = self.seal(&secret)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Webhooks the caller can see, optionally of one tenant.
    pub async fn list(&self, caller: &Caller, tenant_id: Option<Uuid>) -> Result<Vec<Webhook>> {
        caller.require(Scope::Read)?;
        if let Some(t) = tenant_id {
            self.tenants
                .visible(caller, t)
                .await?
                .ok_or(WebhookError::TenantNotFound)?;
        }
        Ok(self
            .webhooks
            .list(caller.actor.subtree().cloned(), tenant_id)
            .await?)
    }

    /// Changes a webhook as it is when the change commits.
    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: WebhookPatch,
        precondition: Precondition,
    ) -> Result<Webhook> {
        caller.require(Scope::Write)?;
        // A webhook the caller cannot see is 404 before any validation; validate (and
        // resolve the URL) once; only a retry re-reads the stored state.
        let mut before = self.get(caller, id).await?;
        let url = match &patch.url {
            Some(u) => Some(self.checked_url(u).await?),
            None => None,
        };
        let events = patch
            .events
            .as_ref()
            .map(|e| Subscriptions::parse(e, &self.config.events).map(Subscriptions::into_vec))
            .transpose()?;
        let description = patch.description.map(validate_description).transpose()?;
        if let Some(s) = &patch.secret {
            validate_secret(s)?;
        }
        let rate_limit = patch
            .rate_limit_per_second
            .map(|r| r.map(validate_rate_limit).transpose())
            .transpose()?;
        let mut attempt = 0;
        let mut key_tries = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                before = self.get(caller, id).await?;
            }
            check_precondition(precondition, before.version)?;
            let mut after = before.clone();
            if let Some(u) = &url {
                after.url.clone_from(u);
            }
            if let Some(e) = &events {
                after.events.clone_from(e);
            }
            if let Some(a) = patch.active {
                after.active = a;
                // Turned on again by hand: the engine's reason no longer holds.
                if a {
                    after.disabled_reason = None;
                }
            }
            if let Some(r) = rate_limit {
                after.rate_limit_per_second = r;
            }
            if let Some(o) = patch.ordering {
                after.ordering = o;
            }
            if let Some(d) = &description {
                after.description.clone_from(d);
            }
            let secret_encrypted = patch.secret.as_deref().map(|s| self.seal(s)).transpose()?;
            if after == before && secret_encrypted.is_none() {
                return Ok(before);
            }
            after.updated_at = self.clock.now();
            let mut after_state = state_of(&after);
            after_state["secret_changed"] = Value::Bool(secret_encrypted.is_some());
            let journal = caller
                .journal("webhook.updated", "webhook")
                .resource(id)
                .tenant(after.tenant_id)
                .before(Some(state_of(&before)))
                .after(Some(after_state));
            match self
                .webhooks
                .update(after.clone(), before.version, secret_encrypted, journal)
                .await
            {
                Ok(version) => {
                    after.version = version;
                    return Ok(after);
                }
                Err(WebhookError::Stale) => after_stale(precondition, attempt)?,
                // A rotation committed after we sealed the secret: seal it again under the
                // active key (the next pass re-reads and re-seals) when this process holds it.
                Err(WebhookError::Store(StoreError::KeyNotActive { active_key_id }))
                    if key_tries < KEY_RETRIES =>
                {
                    key_tries += 1;
                    self.adopt(active_key_id)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Replaces a webhook's signing secret while the one it replaces keeps signing for a
    /// grace period; returns the webhook and, when the server generated the new secret, that
    /// secret.
    pub async fn rotate_secret(
        &self,
        caller: &Caller,
        id: Uuid,
        input: SecretRotation,
        precondition: Precondition,
    ) -> Result<(Webhook, Option<String>)> {
        caller.require(Scope::Write)?;
        let mut before = self.get(caller, id).await?;
        if let Some(s) = &input.secret {
            validate_secret(s)?;
        }
        let grace = input
            .grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
        if grace > MAX_GRACE_PERIOD_SECONDS {
            return Err(WebhookError::Validation {
                field: "grace_period_seconds",
                message: "must be an integer from 0 to 604800".into(),
            });
        }
        let (secret, generated) = match input.secret {
            Some(s) => (s, false),
            None => (generate_whsec(), true),
        };
        let mut attempt = 0;
        let mut key_tries = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                before = self.get(caller, id).await?;
            }
            check_precondition(precondition, before.version)?;
            let secret_encrypted = self.seal(&secret)?;
            let now = self.clock.now();
            let expires = now + time::Duration::seconds(i64::from(grace));
            let mut after_state = state_of(&before);
            after_state["secret_changed"] = Value::Bool(true);
            after_state["grace_period_seconds"] = Value::from(grace);
            after_state["previous_secret_expires_at"] = if grace > 0 {
                Value::String(stratum_core::timefmt::format(expires))
            } else {
                before
                    .previous_secret_expires_at
                    .filter(|t| *t > now)
                    .map_or(Value::Null, |t| {
                        Value::String(stratum_core::timefmt::format(t))
                    })
            };
            let journal = caller
                .journal("webhook.secret_rotated", "webhook")
                .resource(id)
                .tenant(before.tenant_id)
                .before(Some(state_of(&before)))
                .after(Some(after_state));
            match self
                .webhooks
                .rotate_secret(id, before.version, secret_encrypted, expires, now, journal)
                .await
            {
                Ok(after) => return Ok((after, generated.then_some(secret))),
                Err(WebhookError::Stale) => after_stale(precondition, attempt)?,
                Err(WebhookError::Store(StoreError::KeyNotActive { active_key_id }))
                    if key_tries < KEY_RETRIES =>
                {
                    key_tries += 1;
                    self.adopt(active_key_id)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes a webhook and its deliveries.
    pub async fn delete(
        &self,
        caller: &Caller,
        id: Uuid,
        precondition: Precondition,
    ) -> Result<()> {
        caller.require(Scope::Write)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.get(caller, id).await?;
            check_precondition(precondition, before.version)?;
            let journal = caller
                .journal("webhook.deleted", "webhook")
                .resource(id)
                .tenant(before.tenant_id)
                .before(Some(state_of(&before)));
            match self.webhooks.delete(id, before.version, journal).await {
                Err(WebhookError::Stale) => after_stale(precondition, attempt)?,
                other => return other,
            }
        }
    }

    /// Sends a synthetic `webhook.test` event now, through the same SSRF guard and signing
    /// as real deliveries, and reports what the receiver said.
    pub async fn test(&self, caller: &Caller, id: Uuid) -> Result<TestResult> {
        caller.require(Scope::Write)?;
        let webhook = self.get(caller, id).await?;
        let secret = self
            .webhooks
            .secret(id)
            .await?
            .ok_or(WebhookError::NotFound)?;
        let now = self.clock.now();
        let result = match self.checked_url(webhook.url.as_str()).await {
            Err(WebhookError::UrlInvalid(reason)) => TestResult {
                success: false,
                response_code: None,
                error: Some(format!("blocked target: {reason}")),
            },
            Err(other) => return Err(other),
            Ok(_) => {
                let synthetic = ClaimedDelivery {
                    id: new_id(),
                    lease_id: Uuid::nil(),
                    attempts: 0,
                    webhook_id: webhook.id,
                    url: webhook.url.as_str().to_owned(),
                    secret_encrypted: secret,
                    previous_secrets: Vec::new(),
                    fifo: false,
                    not_before: None,
                    event_id: new_id(),
                    event_type: WEBHOOK_TEST.as_str().to_owned(),
                    tenant_id: webhook.tenant_id,
                    payload: json!({"webhook_id": webhook.id, "message": "This is a test event from Stratum."}),
                    event_created_at: now,
                    trace_context: stratum_core::trace_context::current(),
                };
                match build_request(&synthetic, &self.keyring.get(), now) {
                    // Another process rotated to a key this one does not hold: 503.
                    Err(BuildError::KeyUnavailable { key_id }) => {
                        return Err(WebhookError::Store(StoreError::KeyUnavailable { key_id }))
                    }
                    Err(e) => TestResult {
                        success: false,
                        response_code: None,
                        error: Some(e.to_string()),
                    },
                    Ok(request) => {
                        let outcome = self.client.send(request).await;
                        let success = outcome.status.is_some_and(|s| (200..300).contains(&s));
                        let error = match (&outcome.error, outcome.status) {
                            (Some(e), _) => Some(e.clone()),
                            (None, Some(s)) if !success => Some(format!("receiver answered {s}")),
                            _ => None,
                        };
                        TestResult {
                            success,
                            response_code: outcome.status,
                            error,
                        }
                    }
                }
            }
        };
        let journal = caller
            .journal("webhook.tested", "webhook")
            .resource(id)
            .tenant(webhook.tenant_id)
            .after(Some(serde_json::to_value(&result).unwrap_or(Value::Null)));
        self.webhooks.journal(journal).await?;
        Ok(result)
    }

    /// A webhook's deliveries, newest first; the cursor of the next page when more remain.
    pub async fn deliveries(
        &self,
        caller: &Caller,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        cursor: Option<Uuid>,
        limit: Limit,
    ) -> Result<(Vec<Delivery>, Option<Uuid>)> {
        caller.require(Scope::Read)?;
        self.get(caller, webhook_id).await?;
        let mut rows = self
            .deliveries
            .list_for_webhook(webhook_id, status, cursor, limit)
            .await
            .map_err(|e| match e {
                PageError::BadCursor => WebhookError::Validation {
                    field: "cursor",
                    message: "does not name a delivery of this webhook".into(),
                },
                PageError::Store(s) => WebhookError::Store(s),
            })?;
        let next = stratum_core::next_page(&mut rows, limit, |d| d.id);
        Ok((rows, next))
    }

    /// Success rate, median latency and queue depth of a webhook the caller can see.
    pub async fn health(&self, caller: &Caller, webhook_id: Uuid) -> Result<WebhookHealth> {
        caller.require(Scope::Read)?;
        self.get(caller, webhook_id).await?;
        let since = self.clock.now() - time::Duration::seconds(HEALTH_WINDOW_SECONDS);
        let f = self.deliveries.health(webhook_id, since).await?;
        #[allow(
            clippy::cast_precision_loss,
            reason = "attempt counts stay far below 2^52"
        )]
        let success_rate = (f.attempts > 0).then(|| f.successes as f64 / f.attempts as f64);
        let (last_error, last_error_at) = match f.last_error {
            Some((e, at)) => (Some(e), Some(at)),
            None => (None, None),
        };
        Ok(WebhookHealth {
            webhook_id,
            window_seconds: HEALTH_WINDOW_SECONDS,
            attempts: f.attempts,
            successes: f.successes,
            success_rate,
            p50_latency_ms: f.p50_latency_ms,
            last_error,
            last_error_at,
            queue_depth: f.queue_depth,
            breaker: f.breaker,
        })
    }

    /// One delivery of a webhook the caller can see, with its webhook and the event it
    /// carries (the body sent is built from that event).
    pub async fn delivery(
        &self,
        caller: &Caller,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<FailedDelivery> {
        caller.require(Scope::Read)?;
        self.get(caller, webhook_id).await?;
        self.deliveries
            .detail(webhook_id, delivery_id)
            .await?
            .ok_or(WebhookError::DeliveryNotFound)
    }

    /// Attempt figures of a webhook the caller can see in buckets over a window ending now
    /// (defaults: a day in hours). The window is 60 s to 7 days, the bucket at least 60 s and
    /// at most the window, and there are at most 1,000 buckets; anything else is a
    /// validation error.
    pub async fn health_series(
        &self,
        caller: &Caller,
        webhook_id: Uuid,
        window_seconds: Option<i64>,
        bucket_seconds: Option<i64>,
    ) -> Result<HealthSeries> {
        caller.require(Scope::Read)?;
        let window = window_seconds.unwrap_or(SERIES_DEFAULT_WINDOW_SECONDS);
        if !(SERIES_MIN_BUCKET_SECONDS..=SERIES_MAX_WINDOW_SECONDS).contains(&window) {
            return Err(WebhookError::Validation {
                field: "window",
                message: format!(
                    "must be {SERIES_MIN_BUCKET_SECONDS} to {SERIES_MAX_WINDOW_SECONDS} seconds"
                ),
            });
        }
        let bucket = bucket_seconds.unwrap_or(SERIES_DEFAULT_BUCKET_SECONDS.min(window));
        if !(SERIES_MIN_BUCKET_SECONDS..=window).contains(&bucket) {
            return Err(WebhookError::Validation {
                field: "bucket",
                message: format!(
                    "must be {SERIES_MIN_BUCKET_SECONDS} seconds to the window ({window} seconds)"
                ),
            });
        }
        let count = (window + bucket - 1) / bucket;
        if count > SERIES_MAX_BUCKETS {
            return Err(WebhookError::Validation {
                field: "bucket",
                message: format!(
                    "makes {count} buckets of the window; at most {SERIES_MAX_BUCKETS} are allowed"
                ),
            });
        }
        self.get(caller, webhook_id).await?;
        let now = self.clock.now().unix_timestamp();
        let last_start = now - now.rem_euclid(bucket);
        let first_start = last_start - (count - 1) * bucket;
        let at = |secs: i64| {
            OffsetDateTime::from_unix_timestamp(secs).map_err(|_| WebhookError::Validation {
                field: "window",
                message: "reaches outside the representable time range".into(),
            })
        };
        let from = at(first_start)?;
        let until = at(last_start + bucket)?;
        let rows = self
            .deliveries
            .health_series(webhook_id, from, bucket, count)
            .await?;
        #[allow(
            clippy::cast_precision_loss,
            reason = "attempt counts stay far below 2^52"
        )]
        let buckets = rows
            .into_iter()
            .map(|b| HealthBucket {
                start: b.start,
                attempts: b.attempts,
                successes: b.successes,
                success_rate: (b.attempts > 0).then(|| b.successes as f64 / b.attempts as f64),
                p50_latency_ms: b.p50_latency_ms,
                p99_latency_ms: b.p99_latency_ms,
            })
            .collect();
        Ok(HealthSeries {
            webhook_id,
            window_seconds: window,
            bucket_seconds: bucket,
            from,
            until,
            buckets,
        })
    }

    /// Every attempt of one delivery of a webhook the caller can see, oldest first.
    pub async fn attempts(
        &self,
        caller: &Caller,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Vec<DeliveryAttempt>> {
        caller.require(Scope::Read)?;
        self.get(caller, webhook_id).await?;
        self.deliveries
            .attempts(webhook_id, delivery_id)
            .await?
            .ok_or(WebhookError::DeliveryNotFound)
    }

    /// Delivery counts the caller can see.
    pub async fn stats(&self, caller: &Caller) -> Result<DeliveryStats> {
        caller.require(Scope::Read)?;
        Ok(self
            .deliveries
            .stats(caller.actor.subtree().cloned())
            .await?)
    }

    /// The dead-letter queue.
    pub async fn failed(&self, caller: &Caller, limit: Limit) -> Result<Vec<FailedDelivery>> {
        caller.require(Scope::Read)?;
        Ok(self
            .deliveries
            .failed(caller.actor.subtree().cloned(), limit)
            .await?)
    }

    /// Re-queues one failed delivery.
    pub async fn retry(&self, caller: &Caller, delivery_id: Uuid) -> Result<()> {
        caller.require(Scope::Write)?;
        let (delivery, path) = self
            .deliveries
            .get(delivery_id)
            .await?
            .ok_or(WebhookError::DeliveryNotFound)?;
        if !caller.actor.can_see_owned_by(path.as_ref()) {
            return Err(WebhookError::DeliveryNotFound);
        }
        if delivery.status != DeliveryStatus::Failed {
            return Err(WebhookError::DeliveryNotFailed);
        }
        let journal = caller
            .journal("delivery.retried", "delivery")
            .resource(delivery_id)
            .tenant(delivery.tenant_id)
            .before(Some(serde_json::to_value(&delivery).unwrap_or(Value::Null)));
        self.deliveries.retry(delivery_id, journal).await
    }

    /// Re-queues every failed delivery the caller can see.
    pub async fn retry_all(&self, caller: &Caller) -> Result<u64> {
        caller.require(Scope::Write)?;
        let journal = caller.journal("delivery.retried_all", "delivery");
        self.deliveries
            .retry_all(caller.actor.subtree().cloned(), journal)
            .await
    }
}
