//! Webhooks, the delivery queue and the dead-letter queue on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Interval, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use stratum_core::{EventType, Journal, Limit, PageError, StoreError, TenantPath};
use stratum_webhooks::{
    disabled_journal, Breaker, BreakerConfig, BreakerState, BreakerTransitions, BucketFigures,
    ClaimedDelivery, Completion, Delivery, DeliveryAttempt, DeliveryOrdering, DeliveryQueue,
    DeliveryStats, DeliveryStatus, DeliveryStore, DisabledReason, EventRef, FailedDelivery,
    HealthFigures, PreviousSecret, Verdict, Webhook, WebhookError, WebhookRef, WebhookStore,
    WebhookUrl,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cached::CachedExt;
use crate::error::{is_fk_violation, map_query_error};
use crate::in_tx;
use crate::journal::record;
use crate::schema::{
    tenants, webhook_controls, webhook_deliveries, webhook_delivery_attempts, webhooks,
};
use crate::status;
use crate::tenancy::like_prefix;
use crate::tx::{read_conn, TxError};
use crate::Pool;

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhooks)]
struct WebhookRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    url: String,
    events: Vec<Option<String>>,
    active: bool,
    description: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    version: i64,
    rate_limit_per_second: Option<i32>,
    ordering: String,
    disabled_reason: Option<String>,
    previous_secrets_expire_at: Vec<Option<OffsetDateTime>>,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::internal(format!(
        "stored {what} '{value}' is not one this release knows"
    ))
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(r: WebhookRow) -> Result<Self, StoreError> {
        let ordering =
            DeliveryOrdering::parse(&r.ordering).ok_or_else(|| corrupt("ordering", &r.ordering))?;
        let disabled_reason = r
            .disabled_reason
            .map(|d| DisabledReason::parse(&d).ok_or_else(|| corrupt("disabled_reason", &d)))
            .transpose()?;
        let now = OffsetDateTime::now_utc();
        Ok(Self {
            id: r.id,
            tenant_id: r.tenant_id,
            url: WebhookUrl::from_stored(r.url),
            events: stored_events(r.id, r.events),
            active: r.active,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
            rate_limit_per_second: r.rate_limit_per_second.and_then(|n| u32::try_from(n).ok()),
            ordering,
            disabled_reason,
            previous_secret_expires_at: r
                .previous_secrets_expire_at
                .into_iter()
                .flatten()
                .filter(|t| *t > now)
                .max(),
            version: r.version,
        })
    }
}

fn rate_col(w: &Webhook) -> Option<i32> {
    w.rate_limit_per_second
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

/// Gives the pending deliveries of a FIFO webhook that have no lane position one, in the
/// order they were created (deliveries made while it was unordered join the lane).
async fn join_lane(conn: &mut AsyncPgConnection, webhook_id: Uuid) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE webhook_deliveries d SET lane_seq = o.seq
           FROM (SELECT q.id, q.event_id, nextval('webhook_lane_seq') AS seq
                   FROM (SELECT id, event_id FROM webhook_deliveries
                          WHERE webhook_id = $1 AND status = 'pending' AND lane_seq IS NULL
                          ORDER BY created_at, id) q) o
          WHERE d.id = o.id AND d.event_id = o.event_id",
    )
    .bind::<SqlUuid, _>(webhook_id)
    .execute(conn)
    .await
}

/// The stored event names as event types; a name that is not one (only a hand-edited row
/// could hold it) is left out with a warning, since nothing can be delivered for it.
fn stored_events(webhook_id: Uuid, names: Vec<Option<String>>) -> Vec<EventType> {
    names
        .into_iter()
        .flatten()
        .filter_map(|n| match EventType::parse(&n) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(%webhook_id, error = %e, "ignoring a malformed stored event name");
                None
            }
        })
        .collect()
}

fn events_col(w: &Webhook) -> Vec<Option<String>> {
    w.events.iter().map(|e| Some(e.to_string())).collect()
}

/// Webhooks on PostgreSQL.
#[derive(Clone)]
pub struct PgWebhookStore {
    pool: Pool,
    max_per_tenant: i64,
}

/// Default of `STRATUM_WEBHOOK_MAX_PER_TENANT`.
pub const DEFAULT_WEBHOOK_MAX_PER_TENANT: i64 = 1_000;

impl PgWebhookStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            max_per_tenant: DEFAULT_WEBHOOK_MAX_PER_TENANT,
        }
    }

    /// At most `n` webhooks per tenant, and `n` global ones (`STRATUM_WEBHOOK_MAX_PER_TENANT`).
    pub fn with_max_per_tenant(mut self, n: i64) -> Self {
        self.max_per_tenant = n;
        self
    }
}

/// Refuses one more webhook for `tenant_id` (`None`: the global ones) once `max` exist.
/// Creates for one owner are serialized by a transaction-scoped advisory lock, so
/// concurrent creates cannot overshoot the limit together.
async fn check_webhook_limit(
    conn: &mut AsyncPgConnection,
    tenant_id: Option<Uuid>,
    max: i64,
) -> Result<(), TxError<WebhookError>> {
    let owner = tenant_id.map_or_else(|| "global".to_owned(), |t| t.to_string());
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('stratum.webhooks.' || $1, 0))",
    )
    .bind::<Text, _>(owner)
    .execute(conn)
    .await?;
    let mut q = webhooks::table.into_boxed();
    q = match tenant_id {
        Some(t) => q.filter(webhooks::tenant_id.eq(t)),
        None => q.filter(webhooks::tenant_id.is_null()),
    };
    let n: i64 = q.count().get_result(conn).await?;
    if n >= max {
        return Err(TxError::Domain(WebhookError::LimitReached(format!(
            "at most {max} webhooks per tenant (and {max} global ones); delete one first"
        ))));
    }
    Ok(())
}

#[async_trait]
impl WebhookStore for PgWebhookStore {
    async fn create(
        &self,
        w: Webhook,
        secret_encrypted: String,
        journal: Journal,
    ) -> Result<(), WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            crate::keys::ensure_active_key(conn, &secret_encrypted).await?;
            if let Some(t) = w.tenant_id {
                let active: Option<String> = tenants::table
                    .find(t)
                    .filter(tenants::status.eq(status::TENANT_ACTIVE))
                    .select(tenants::ancestry_path)
                    .for_share()
                    .first(conn)
                    .await
                    .optional()?;
                if active.is_none() {
                    return Err(TxError::Domain(WebhookError::TenantNotFound));
                }
            }
            check_webhook_limit(conn, w.tenant_id, self.max_per_tenant).await?;
            diesel::insert_into(webhooks::table)
                .values((
                    webhooks::id.eq(w.id),
                    webhooks::tenant_id.eq(w.tenant_id),
                    webhooks::url.eq(w.url.as_str()),
                    webhooks::events.eq(events_col(&w)),
                    webhooks::secret_encrypted.eq(&secret_encrypted),
                    webhooks::active.eq(w.active),
                    webhooks::description.eq(&w.description),
                    webhooks::created_at.eq(w.created_at),
                    webhooks::updated_at.eq(w.updated_at),
                    webhooks::rate_limit_per_second.eq(rate_col(&w)),
                    webhooks::ordering.eq(w.ordering.as_str()),
                ))
                .execute(conn)
                .await
                .map_err(|e| {
                    if is_fk_violation(&e) {
                        TxError::Domain(WebhookError::TenantNotFound)
                    } else {
                        TxError::Db(e)
                    }
                })?;
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn get(&self, id: Uuid) -> Result<Option<(Webhook, Option<TenantPath>)>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<(WebhookRow, Option<String>)> = webhooks::table
            .left_join(tenants::table)
            .filter(webhooks::id.eq(id))
            .select((WebhookRow::as_select(), tenants::ancestry_path.nullable()))
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        row.map(|(w, p)| Ok((w.try_into()?, p.as_deref().and_then(TenantPath::parse))))
            .transpose()
    }

    async fn secret(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        webhooks::table
            .find(id)
            .select(webhooks::secret_encrypted)
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)
    }

    async fn list(
        &self,
        subtree: Option<TenantPath>,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<Webhook>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = webhooks::table.left_join(tenants::table).into_boxed();
        if let Some(p) = subtree {
            q = q.filter(tenants::ancestry_path.like(like_prefix(p.as_str())));
        }
        if let Some(t) = tenant_id {
            q = q.filter(webhooks::tenant_id.eq(t));
        }
        let rows: Vec<WebhookRow> = q
            .order((webhooks::created_at.desc(), webhooks::id.desc()))
            .select(WebhookRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        rows.into_iter().map(Webhook::try_from).collect()
    }

    async fn update(
        &self,
        w: Webhook,
        expected: i64,
        secret_encrypted: Option<String>,
        journal: Journal,
    ) -> Result<i64, WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            if let Some(s) = &secret_encrypted {
                crate::keys::ensure_active_key(conn, s).await?;
            }
            // The breaker's row first, as completions lock it before the webhook's.
            if w.active {
                webhook_controls::table
                    .find(w.id)
                    .select(webhook_controls::webhook_id)
                    .for_update()
                    .first::<Uuid>(conn)
                    .await
                    .optional()?;
            }
            // Read what is replaced under the row lock: turning a webhook on again closes its
            // breaker, which only its own failures should reopen.
            let was_active: Option<bool> = webhooks::table
                .find(w.id)
                .filter(webhooks::version.eq(expected))
                .select(webhooks::active)
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let written: Option<i64> = diesel::update(
                webhooks::table
                    .find(w.id)
                    .filter(webhooks::version.eq(expected)),
            )
            .set((
                webhooks::url.eq(w.url.as_str()),
                webhooks::events.eq(events_col(&w)),
                webhooks::active.eq(w.active),
                webhooks::description.eq(&w.description),
                webhooks::updated_at.eq(w.updated_at),
                webhooks::rate_limit_per_second.eq(rate_col(&w)),
                webhooks::ordering.eq(w.ordering.as_str()),
                webhooks::disabled_reason.eq(w.disabled_reason.map(DisabledReason::as_str)),
                webhooks::version.eq(webhooks::version + 1),
            ))
            .returning(webhooks::version)
            .get_result(conn)
            .await
            .optional()?;
            let Some(version) = written else {
                return stale_or_gone(conn, w.id).await;
            };
            if w.active && was_active == Some(false) {
                close_breaker(conn, w.id).await?;
            }
            if w.ordering == DeliveryOrdering::Fifo {
                join_lane(conn, w.id).await?;
            }
            if let Some(s) = &secret_encrypted {
                diesel::update(webhooks::table.find(w.id))
                    .set(webhooks::secret_encrypted.eq(s))
                    .execute(conn)
                    .await?;
            }
            record(conn, &journal).await?;
            Ok(version)
        })
    }

    async fn rotate_secret(
        &self,
        id: Uuid,
        expected: i64,
        secret_encrypted: String,
        previous_expires_at: OffsetDateTime,
        now: OffsetDateTime,
        journal: Journal,
    ) -> Result<Webhook, WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            crate::keys::ensure_active_key(conn, &secret_encrypted).await?;
            // The replaced secret is read by the statement that replaces it (SET sees the row
            // as it was): it heads the previous secrets, expired ones go, ten are kept.
            let n = diesel::sql_query(
                "UPDATE webhooks w
                    SET (previous_secrets, previous_secrets_expire_at) = (
                            SELECT coalesce(array_agg(k.s ORDER BY k.ord), '{}'),
                                   coalesce(array_agg(k.x ORDER BY k.ord), '{}')
                              FROM (SELECT u.s, u.x, u.ord
                                      FROM unnest(array_prepend(w.secret_encrypted, w.previous_secrets),
                                                  array_prepend($3::timestamptz, w.previous_secrets_expire_at))
                                           WITH ORDINALITY AS u(s, x, ord)
                                     WHERE u.x > $4
                                     ORDER BY u.ord
                                     LIMIT $5) k),
                        secret_encrypted = $6,
                        updated_at = $4,
                        version = w.version + 1
                  WHERE w.id = $1 AND w.version = $2",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(expected)
            .bind::<Timestamptz, _>(previous_expires_at)
            .bind::<Timestamptz, _>(now)
            .bind::<BigInt, _>(stratum_webhooks::MAX_PREVIOUS_SECRETS as i64)
            .bind::<Text, _>(&secret_encrypted)
            .execute(conn)
            .await?;
            if n == 0 {
                return stale_or_gone(conn, id).await;
            }
            let row: WebhookRow = webhooks::table
                .find(id)
                .select(WebhookRow::as_select())
                .first(conn)
                .await?;
            let webhook = Webhook::try_from(row).map_err(|e| TxError::Domain(e.into()))?;
            record(conn, &journal).await?;
            Ok(webhook)
        })
    }

    async fn delete(&self, id: Uuid, expected: i64, journal: Journal) -> Result<(), WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            let n = diesel::delete(
                webhooks::table
                    .find(id)
                    .filter(webhooks::version.eq(expected)),
            )
            .execute(conn)
            .await?;
            if n == 0 {
                return stale_or_gone(conn, id).await;
            }
            record(conn, &journal).await?;
            Ok(())
        })
    }

    async fn journal(&self, journal: Journal) -> Result<(), StoreError> {
        in_tx!(self.pool, StoreError, |conn| {
            record(conn, &journal).await?;
            Ok(())
        })
    }
}

/// After a conditional write matched no row: `Stale` when the webhook exists (its version
/// was what differed), else `NotFound`.
async fn stale_or_gone<T>(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<T, TxError<WebhookError>> {
    let exists: bool = diesel::select(diesel::dsl::exists(webhooks::table.find(id)))
        .get_result(conn)
        .await?;
    Err(TxError::Domain(if exists {
        WebhookError::Stale
    } else {
        WebhookError::NotFound
    }))
}

impl From<TxError<StoreError>> for StoreError {
    fn from(e: TxError<StoreError>) -> Self {
        e.into_domain()
    }
}

#[derive(Queryable, Selectable, QueryableByName)]
#[diesel(table_name = webhook_deliveries)]
struct DeliveryRow {
    id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: String,
    tenant_id: Option<Uuid>,
    status: String,
    attempts: i32,
    next_retry_at: OffsetDateTime,
    last_error: Option<String>,
    response_code: Option<i32>,
    created_at: OffsetDateTime,
    completed_at: Option<OffsetDateTime>,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        let status = DeliveryStatus::parse(&r.status).unwrap_or(DeliveryStatus::Pending);
        Self {
            id: r.id,
            webhook_id: r.webhook_id,
            event_id: r.event_id,
            event_type: r.event_type,
            tenant_id: r.tenant_id,
            status,
            attempts: r.attempts,
            next_retry_at: (status == DeliveryStatus::Pending).then_some(r.next_retry_at),
            last_error: r.last_error,
            response_code: r.response_code,
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

/// Deliveries as the API sees them, on PostgreSQL.
#[derive(Clone)]
pub struct PgDeliveryStore {
    pool: Pool,
}

impl PgDeliveryStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

/// `webhook_id IN (webhooks of tenants under the prefix)`, as SQL text for raw queries.
const VISIBLE_WEBHOOKS: &str =
    "SELECT w.id FROM webhooks w JOIN tenants t ON t.id = w.tenant_id WHERE t.ancestry_path LIKE $1";

#[derive(QueryableByName)]
struct StatsRow {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    success: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
}

#[derive(QueryableByName)]
struct FailedRow {
    #[diesel(embed)]
    delivery: DeliveryRow,
    #[diesel(sql_type = Text)]
    w_url: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    w_tenant_id: Option<Uuid>,
    #[diesel(sql_type = Jsonb)]
    e_payload: Value,
    #[diesel(sql_type = Timestamptz)]
    e_created_at: OffsetDateTime,
}

#[derive(QueryableByName)]
struct HealthRow {
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    successes: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    p50: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_error_at: Option<OffsetDateTime>,
    #[diesel(sql_type = BigInt)]
    queue_depth: i64,
    #[diesel(sql_type = Nullable<Text>)]
    breaker_state: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    consecutive_failures: Option<i32>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    opened_at: Option<OffsetDateTime>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_probe_at: Option<OffsetDateTime>,
}

#[derive(QueryableByName)]
struct BucketRow {
    #[diesel(sql_type = Timestamptz)]
    start: OffsetDateTime,
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    successes: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    p50: Option<f64>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    p99: Option<f64>,
}

impl FailedRow {
    fn into_detail(self) -> FailedDelivery {
        let d: Delivery = self.delivery.into();
        FailedDelivery {
            webhook: WebhookRef {
                id: d.webhook_id,
                url: self.w_url,
                tenant_id: self.w_tenant_id,
            },
            event: EventRef {
                id: d.event_id,
                event_type: d.event_type.clone(),
                tenant_id: d.tenant_id,
                data: self.e_payload,
                created_at: self.e_created_at,
            },
            delivery: d,
        }
    }
}

/// The columns of a [`FailedRow`], over `webhook_deliveries d`, `webhooks w` and
/// `webhook_events e`.
const DETAIL_COLUMNS: &str =
    "d.id, d.webhook_id, d.event_id, d.event_type, d.tenant_id, d.status, d.attempts,
     d.next_retry_at, d.last_error, d.response_code, d.created_at, d.completed_at,
     w.url AS w_url, w.tenant_id AS w_tenant_id, e.payload AS e_payload, e.created_at AS e_created_at
     FROM webhook_deliveries d
     JOIN webhooks w ON w.id = d.webhook_id
     JOIN webhook_events e ON e.id = d.event_id";

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhook_delivery_attempts)]
struct AttemptRow {
    id: Uuid,
    delivery_id: Uuid,
    attempt: i32,
    status_code: Option<i32>,
    duration_ms: i32,
    error: Option<String>,
    response_body: Option<String>,
    created_at: OffsetDateTime,
}

impl From<AttemptRow> for DeliveryAttempt {
    fn from(r: AttemptRow) -> Self {
        Self {
            id: r.id,
            delivery_id: r.delivery_id,
            attempt: r.attempt,
            status_code: r.status_code,
            duration_ms: r.duration_ms,
            error: r.error,
            response_body: r.response_body,
            created_at: r.created_at,
        }
    }
}

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    async fn health(
        &self,
        webhook_id: Uuid,
        since: OffsetDateTime,
    ) -> Result<HealthFigures, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        // A failed attempt is one without a 2xx: a transport error or any other status.
        let row: HealthRow = diesel::sql_query(
            "WITH recent AS (
                 SELECT a.status_code, a.duration_ms
                   FROM webhook_delivery_attempts a
                   JOIN webhook_deliveries d ON d.id = a.delivery_id
                  WHERE d.webhook_id = $1 AND a.created_at >= $2),
             last_failed AS (
                 SELECT coalesce(nullif(a.error, ''), 'receiver answered ' || a.status_code) AS error, a.created_at
                   FROM webhook_delivery_attempts a
                   JOIN webhook_deliveries d ON d.id = a.delivery_id
                  WHERE d.webhook_id = $1
                    AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)
                  ORDER BY a.created_at DESC, a.id DESC
                  LIMIT 1)
             SELECT (SELECT count(*) FROM recent) AS attempts,
                    (SELECT count(*) FROM recent WHERE status_code BETWEEN 200 AND 299) AS successes,
                    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FROM recent) AS p50,
                    (SELECT error FROM last_failed) AS last_error,
                    (SELECT created_at FROM last_failed) AS last_error_at,
                    (SELECT count(*) FROM webhook_deliveries
                      WHERE webhook_id = $1 AND status = 'pending') AS queue_depth,
                    k.state AS breaker_state, k.consecutive_failures, k.opened_at, k.next_probe_at
               FROM (SELECT 1) one
               LEFT JOIN webhook_controls k ON k.webhook_id = $1",
        )
        .bind::<SqlUuid, _>(webhook_id)
        .bind::<Timestamptz, _>(since)
        .get_result(&mut conn)
        .await
        .map_err(map_query_error)?;
        Ok(HealthFigures {
            attempts: row.attempts,
            successes: row.successes,
            p50_latency_ms: row.p50,
            last_error: row.last_error.zip(row.last_error_at),
            queue_depth: row.queue_depth,
            breaker: Breaker {
                state: match row.breaker_state {
                    None => BreakerState::Closed,
                    Some(s) => {
                        BreakerState::parse(&s).ok_or_else(|| corrupt("breaker state", &s))?
                    }
                },
                consecutive_failures: row
                    .consecutive_failures
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                opened_at: row.opened_at,
                next_probe_at: row.next_probe_at,
                cooldown_ms: 0,
            },
        })
    }

    async fn health_series(
        &self,
        webhook_id: Uuid,
        from: OffsetDateTime,
        bucket_seconds: i64,
        buckets: i64,
    ) -> Result<Vec<BucketFigures>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        // Each attempt of the window gets the index of its bucket; every index of the series
        // is present, so an empty bucket is a row of zeros (percentile_cont of no rows is
        // null). A failed attempt is one without a 2xx.
        let rows: Vec<BucketRow> = diesel::sql_query(
            "WITH params AS (
                 SELECT $2::timestamptz AS since,
                        make_interval(secs => $3::double precision) AS width,
                        $4::bigint AS n),
             recent AS (
                 SELECT floor(extract(epoch FROM a.created_at - p.since) / $3::double precision)::bigint AS ix,
                        a.status_code, a.duration_ms
                   FROM webhook_delivery_attempts a
                   JOIN webhook_deliveries d ON d.id = a.delivery_id
                  CROSS JOIN params p
                  WHERE d.webhook_id = $1
                    AND a.created_at >= p.since
                    AND a.created_at < p.since + p.width * p.n)
             SELECT p.since + p.width * g.ix AS start,
                    count(r.ix) AS attempts,
                    count(r.ix) FILTER (WHERE r.status_code BETWEEN 200 AND 299) AS successes,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms) AS p50,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_ms) AS p99
               FROM params p
              CROSS JOIN generate_series(0::bigint, p.n - 1) AS g(ix)
               LEFT JOIN recent r ON r.ix = g.ix
              GROUP BY p.since, p.width, g.ix
              ORDER BY g.ix",
        )
        .bind::<SqlUuid, _>(webhook_id)
        .bind::<Timestamptz, _>(from)
        .bind::<BigInt, _>(bucket_seconds)
        .bind::<BigInt, _>(buckets)
        .load(&mut conn)
        .await
        .map_err(map_query_error)?;
        Ok(rows
            .into_iter()
            .map(|r| BucketFigures {
                start: r.start,
                attempts: r.attempts,
                successes: r.successes,
                p50_latency_ms: r.p50,
                p99_latency_ms: r.p99,
            })
            .collect())
    }

    async fn detail(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Option<FailedDelivery>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<FailedRow> = diesel::sql_query(format!(
            "SELECT {DETAIL_COLUMNS} WHERE d.id = $1 AND d.webhook_id = $2"
        ))
        .bind::<SqlUuid, _>(delivery_id)
        .bind::<SqlUuid, _>(webhook_id)
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(map_query_error)?;
        Ok(row.map(FailedRow::into_detail))
    }

    async fn attempts(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Option<Vec<DeliveryAttempt>>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let exists: i64 = webhook_deliveries::table
            .filter(webhook_deliveries::id.eq(delivery_id))
            .filter(webhook_deliveries::webhook_id.eq(webhook_id))
            .count()
            .get_result(&mut conn)
            .await
            .map_err(map_query_error)?;
        if exists == 0 {
            return Ok(None);
        }
        let rows: Vec<AttemptRow> = webhook_delivery_attempts::table
            .filter(webhook_delivery_attempts::delivery_id.eq(delivery_id))
            .order((
                webhook_delivery_attempts::created_at.asc(),
                webhook_delivery_attempts::id.asc(),
            ))
            .select(AttemptRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(Some(rows.into_iter().map(DeliveryAttempt::from).collect()))
    }

    async fn list_for_webhook(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        cursor: Option<Uuid>,
        limit: Limit,
    ) -> Result<Vec<Delivery>, PageError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = webhook_deliveries::table
            .filter(webhook_deliveries::webhook_id.eq(webhook_id))
            .into_boxed();
        if let Some(c) = cursor {
            let at: Option<(OffsetDateTime, Uuid)> = webhook_deliveries::table
                .filter(webhook_deliveries::id.eq(c))
                .filter(webhook_deliveries::webhook_id.eq(webhook_id))
                .select((webhook_deliveries::created_at, webhook_deliveries::id))
                .first(&mut conn)
                .await
                .optional()
                .map_err(map_query_error)?;
            let Some((at, id)) = at else {
                return Err(PageError::BadCursor);
            };
            q = q.filter(
                webhook_deliveries::created_at
                    .lt(at)
                    .or(webhook_deliveries::created_at
                        .eq(at)
                        .and(webhook_deliveries::id.lt(id))),
            );
        }
        if let Some(s) = status {
            q = q.filter(webhook_deliveries::status.eq(s.as_str()));
        }
        let rows: Vec<DeliveryRow> = q
            .order((
                webhook_deliveries::created_at.desc(),
                webhook_deliveries::id.desc(),
            ))
            .limit(limit.fetch())
            .select(DeliveryRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        Ok(rows.into_iter().map(Delivery::from).collect())
    }

    async fn stats(&self, subtree: Option<TenantPath>) -> Result<DeliveryStats, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let select = "SELECT count(*) AS total,
                             count(*) FILTER (WHERE status = 'pending') AS pending,
                             count(*) FILTER (WHERE status = 'success') AS success,
                             count(*) FILTER (WHERE status = 'failed') AS failed
                        FROM webhook_deliveries";
        let row: StatsRow = match subtree {
            None => diesel::sql_query(select).get_result(&mut conn).await,
            Some(p) => {
                diesel::sql_query(format!("{select} WHERE webhook_id IN ({VISIBLE_WEBHOOKS})"))
                    .bind::<Text, _>(like_prefix(p.as_str()))
                    .get_result(&mut conn)
                    .await
            }
        }
        .map_err(map_query_error)?;
        Ok(DeliveryStats {
            total: row.total,
            pending: row.pending,
            success: row.success,
            failed: row.failed,
        })
    }

    async fn failed(
        &self,
        subtree: Option<TenantPath>,
        limit: Limit,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let visible = match &subtree {
            None => "TRUE".to_owned(),
            Some(_) => format!("d.webhook_id IN ({})", VISIBLE_WEBHOOKS.replace("$1", "$2")),
        };
        let q = format!(
            "SELECT {DETAIL_COLUMNS}
              WHERE d.status = 'failed' AND {visible}
              ORDER BY d.created_at DESC, d.id DESC
              LIMIT $1"
        );
        let query = diesel::sql_query(q).bind::<BigInt, _>(limit.as_i64());
        let rows: Vec<FailedRow> = match subtree {
            None => query.load(&mut conn).await,
            Some(p) => {
                query
                    .bind::<Text, _>(like_prefix(p.as_str()))
                    .load(&mut conn)
                    .await
            }
        }
        .map_err(map_query_error)?;
        Ok(rows.into_iter().map(FailedRow::into_detail).collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<(Delivery, Option<TenantPath>)>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<(DeliveryRow, Option<String>)> = webhook_deliveries::table
            .inner_join(webhooks::table.left_join(tenants::table))
            .filter(webhook_deliveries::id.eq(id))
            .select((DeliveryRow::as_select(), tenants::ancestry_path.nullable()))
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(|(d, p)| (d.into(), p.as_deref().and_then(TenantPath::parse))))
    }

    async fn retry(&self, id: Uuid, journal: Journal) -> Result<(), WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            let n = diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::id.eq(id))
                    .filter(webhook_deliveries::status.eq(status::DELIVERY_FAILED)),
            )
            .set(requeue())
            .execute(conn)
            .await?;
            if n == 0 {
                let exists: i64 = webhook_deliveries::table
                    .filter(webhook_deliveries::id.eq(id))
                    .count()
                    .get_result(conn)
                    .await?;
                return Err(TxError::Domain(if exists == 0 {
                    WebhookError::DeliveryNotFound
                } else {
                    WebhookError::DeliveryNotFailed
                }));
            }
            join_fifo_lanes(conn).await?;
            record(conn, &journal).await?;
            crate::wake::mark_or_notify(conn).await?;
            Ok(())
        })
    }

    async fn retry_all(
        &self,
        subtree: Option<TenantPath>,
        mut journal: Journal,
    ) -> Result<u64, WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            let q = diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::status.eq(status::DELIVERY_FAILED)),
            );
            let n = match subtree {
                None => q.set(requeue()).execute(conn).await?,
                Some(p) => {
                    let visible = webhooks::table
                        .inner_join(tenants::table)
                        .filter(tenants::ancestry_path.like(like_prefix(p.as_str())))
                        .select(webhooks::id);
                    diesel::update(
                        webhook_deliveries::table
                            .filter(webhook_deliveries::status.eq(status::DELIVERY_FAILED))
                            .filter(webhook_deliveries::webhook_id.eq_any(visible)),
                    )
                    .set(requeue())
                    .execute(conn)
                    .await?
                }
            };
            if n > 0 {
                join_fifo_lanes(conn).await?;
            }
            journal.after = Some(json!({"retried": n}));
            record(conn, &journal).await?;
            if n > 0 {
                crate::wake::mark_or_notify(conn).await?;
            }
            Ok(n as u64)
        })
    }
}

type Requeue = (
    diesel::dsl::Eq<webhook_deliveries::status, &'static str>,
    diesel::dsl::Eq<webhook_deliveries::attempts, i32>,
    diesel::dsl::Eq<webhook_deliveries::next_retry_at, diesel::dsl::now>,
    diesel::dsl::Eq<webhook_deliveries::completed_at, Option<OffsetDateTime>>,
    diesel::dsl::Eq<webhook_deliveries::lease_id, Option<Uuid>>,
    diesel::dsl::Eq<webhook_deliveries::lease_expires_at, Option<OffsetDateTime>>,
    diesel::dsl::Eq<webhook_deliveries::lane_seq, Option<i64>>,
);

/// Gives every pending delivery of a FIFO webhook that has no lane position one at the end
/// of its lane (dead letters retried by hand), in the order they were created.
async fn join_fifo_lanes(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE webhook_deliveries d SET lane_seq = o.seq
           FROM (SELECT q.id, q.event_id, nextval('webhook_lane_seq') AS seq
                   FROM (SELECT p.id, p.event_id FROM webhook_deliveries p
                           JOIN webhooks w ON w.id = p.webhook_id AND w.ordering = 'fifo'
                          WHERE p.status = 'pending' AND p.lane_seq IS NULL
                          ORDER BY p.created_at, p.id) q) o
          WHERE d.id = o.id AND d.event_id = o.event_id",
    )
    .execute(conn)
    .await
}

/// Closes a webhook's breaker (it was turned on again by hand).
async fn close_breaker(conn: &mut AsyncPgConnection, webhook_id: Uuid) -> QueryResult<usize> {
    diesel::update(webhook_controls::table.find(webhook_id))
        .set((
            webhook_controls::state.eq(BreakerState::Closed.as_str()),
            webhook_controls::consecutive_failures.eq(0),
            webhook_controls::opened_at.eq(None::<OffsetDateTime>),
            webhook_controls::next_probe_at.eq(None::<OffsetDateTime>),
            webhook_controls::cooldown_ms.eq(0),
        ))
        .execute(conn)
        .await
}

fn requeue() -> Requeue {
    (
        webhook_deliveries::status.eq(status::DELIVERY_PENDING),
        webhook_deliveries::attempts.eq(0),
        webhook_deliveries::next_retry_at.eq(diesel::dsl::now),
        webhook_deliveries::completed_at.eq(None),
        webhook_deliveries::lease_id.eq(None),
        webhook_deliveries::lease_expires_at.eq(None),
        webhook_deliveries::lane_seq.eq(None),
    )
}

/// The delivery queue on PostgreSQL: `FOR UPDATE SKIP LOCKED` claims with leases,
/// compare-and-set completions, all in batches.
#[derive(Clone)]
pub struct PgDeliveryQueue {
    pool: Pool,
    breaker: BreakerConfig,
    transitions: std::sync::Arc<BreakerTransitions>,
    trace_context: bool,
}

impl PgDeliveryQueue {
    /// Wires the queue with the default breaker settings.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            breaker: BreakerConfig::default(),
            transitions: std::sync::Arc::default(),
            trace_context: false,
        }
    }

    /// Claims also read each event's trace context (for the attempts' span links); only
    /// worth its join while traces are exported.
    pub fn with_trace_context(mut self, on: bool) -> Self {
        self.trace_context = on;
        self
    }

    /// The circuit breaker's settings (`STRATUM_WEBHOOK_BREAKER_*`).
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// The breaker transitions this queue wrote.
    pub fn transitions(&self) -> std::sync::Arc<BreakerTransitions> {
        std::sync::Arc::clone(&self.transitions)
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhook_controls)]
struct ControlsRow {
    webhook_id: Uuid,
    state: String,
    consecutive_failures: i32,
    opened_at: Option<OffsetDateTime>,
    next_probe_at: Option<OffsetDateTime>,
    cooldown_ms: i64,
}

/// Per webhook of a completion batch, the results of its real attempts in order.
fn attempt_results(completions: &[Completion]) -> Vec<(Uuid, Vec<bool>)> {
    let mut out: Vec<(Uuid, Vec<bool>)> = Vec::new();
    for c in completions {
        let ok = match c.verdict {
            Verdict::Success => true,
            Verdict::Retry { .. } | Verdict::Failed => false,
            // Gone disables the webhook at once; a release was no attempt.
            Verdict::Gone | Verdict::Release { .. } => continue,
        };
        match out.iter_mut().find(|(w, _)| *w == c.webhook_id) {
            Some((_, v)) => v.push(ok),
            None => out.push((c.webhook_id, vec![ok])),
        }
    }
    out
}

/// Disables webhooks for `reason`, each with its `webhook.disabled` journal; reads what it
/// replaces under the row lock, so the audit entry is one more link of the chain.
async fn disable_webhooks(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    reason: DisabledReason,
    now: OffsetDateTime,
) -> Result<usize, TxError<StoreError>> {
    if ids.is_empty() {
        return Ok(0);
    }
    let before: Vec<WebhookRow> = webhooks::table
        .filter(webhooks::id.eq_any(ids))
        .filter(webhooks::active.eq(true))
        .select(WebhookRow::as_select())
        .order(webhooks::id)
        .for_update()
        .load(conn)
        .await?;
    if before.is_empty() {
        return Ok(0);
    }
    let locked: Vec<Uuid> = before.iter().map(|w| w.id).collect();
    diesel::update(webhooks::table.filter(webhooks::id.eq_any(&locked)))
        .set((
            webhooks::active.eq(false),
            webhooks::disabled_reason.eq(Some(reason.as_str())),
            webhooks::updated_at.eq(now),
            webhooks::version.eq(webhooks::version + 1),
        ))
        .execute(conn)
        .await?;
    for w in before {
        let w = Webhook::try_from(w).map_err(TxError::Domain)?;
        record(conn, &disabled_journal(&w, reason, now)).await?;
    }
    Ok(locked.len())
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Text)]
    secret_encrypted: String,
    #[diesel(sql_type = Array<Text>)]
    previous_secrets: Vec<String>,
    #[diesel(sql_type = Array<Timestamptz>)]
    previous_secrets_expire_at: Vec<OffsetDateTime>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fifo: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    not_before: Option<OffsetDateTime>,
    #[diesel(sql_type = SqlUuid)]
    event_id: Uuid,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    tenant_id: Option<Uuid>,
    #[diesel(sql_type = Jsonb)]
    payload: Value,
    #[diesel(sql_type = Timestamptz)]
    event_created_at: OffsetDateTime,
    #[diesel(sql_type = Nullable<Text>)]
    trace_context: Option<String>,
}

/// The claim; with the events' trace contexts, or NULL for them.
const CLAIM: &str = "SELECT id, attempts, webhook_id, url, secret_encrypted, previous_secrets,
        previous_secrets_expire_at, fifo, not_before, event_id, event_type, tenant_id,
        payload, event_created_at, NULL::text AS trace_context
   FROM stratum_claim_controlled($1, $2, $3, $4, $5, $6)";
const CLAIM_TRACED: &str = "SELECT c.id, c.attempts, c.webhook_id, c.url, c.secret_encrypted,
        c.previous_secrets, c.previous_secrets_expire_at, c.fifo, c.not_before, c.event_id,
        c.event_type, c.tenant_id, c.payload, c.event_created_at, e.trace_context
   FROM stratum_claim_controlled($1, $2, $3, $4, $5, $6) c
   LEFT JOIN webhook_events e ON e.id = c.event_id";

/// Leases up to `limit` due deliveries (see `stratum_claim_controlled`): of the webhooks
/// in `webhooks` at most their `rooms`, of any other at most `default`.
async fn claim_rows(
    conn: &AsyncPgConnection,
    traced: bool,
    (limit, default): (i64, i64),
    (webhooks, rooms): (&[Uuid], &[i64]),
    (lease_id, lease): (Uuid, Duration),
) -> QueryResult<Vec<ClaimRow>> {
    let lease = diesel::data_types::PgInterval::from_microseconds(
        i64::try_from(lease.as_micros()).unwrap_or(i64::MAX),
    );
    let mut shared = conn;
    // The claim lives in a PL/pgSQL function so its plan is kept per connection.
    diesel::sql_query(if traced { CLAIM_TRACED } else { CLAIM })
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(default)
        .bind::<Array<SqlUuid>, _>(webhooks)
        .bind::<Array<BigInt>, _>(rooms)
        .bind::<SqlUuid, _>(lease_id)
        .bind::<Interval, _>(lease)
        .cached()
        .load(&mut shared)
        .await
}

impl ClaimRow {
    fn into_claimed(self, lease_id: Uuid) -> ClaimedDelivery {
        ClaimedDelivery {
            id: self.id,
            lease_id,
            attempts: self.attempts,
            webhook_id: self.webhook_id,
            url: self.url,
            secret_encrypted: self.secret_encrypted,
            previous_secrets: self
                .previous_secrets
                .into_iter()
                .zip(self.previous_secrets_expire_at)
                .map(|(secret_encrypted, expires_at)| PreviousSecret {
                    secret_encrypted,
                    expires_at,
                })
                .collect(),
            fifo: self.fifo,
            not_before: self.not_before,
            event_id: self.event_id,
            event_type: self.event_type,
            tenant_id: self.tenant_id,
            payload: self.payload,
            event_created_at: self.event_created_at,
            trace_context: self.trace_context,
        }
    }
}

/// A batch of completions as the columns `stratum_complete_deliveries` takes.
struct CompletionColumns {
    ids: Vec<Uuid>,
    event_ids: Vec<Uuid>,
    leases: Vec<Uuid>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    next: Vec<OffsetDateTime>,
    errors: Vec<Option<String>>,
    codes: Vec<Option<i32>>,
    completed: Vec<Option<OffsetDateTime>>,
    counted: Vec<bool>,
    durations: Vec<i32>,
    bodies: Vec<Option<String>>,
    /// Webhooks whose receivers answered 410 Gone.
    gone: Vec<Uuid>,
}

impl CompletionColumns {
    fn new(completions: &[Completion], now: OffsetDateTime) -> Self {
        let n = completions.len();
        let mut cols = Self {
            ids: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            leases: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            next: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            codes: Vec::with_capacity(n),
            completed: Vec::with_capacity(n),
            counted: Vec::with_capacity(n),
            durations: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            gone: Vec::new(),
        };
        for c in completions {
            let (status, at, done, is_attempt) = match &c.verdict {
                Verdict::Success => (status::DELIVERY_SUCCESS, now, Some(now), true),
                Verdict::Retry { at } => (status::DELIVERY_PENDING, *at, None, true),
                Verdict::Failed => (status::DELIVERY_FAILED, now, Some(now), true),
                Verdict::Gone => {
                    cols.gone.push(c.webhook_id);
                    (status::DELIVERY_FAILED, now, Some(now), true)
                }
                Verdict::Release { at } => (status::DELIVERY_PENDING, *at, None, false),
            };
            cols.ids.push(c.delivery_id);
            cols.event_ids.push(c.event_id);
            cols.leases.push(c.lease_id);
            cols.statuses.push(status);
            cols.attempts.push(c.attempt);
            cols.next.push(at);
            cols.errors
                .push(match (&c.outcome.error, c.outcome.status) {
                    (Some(e), _) => Some(e.clone()),
                    (None, Some(s)) if !(200..300).contains(&s) => {
                        Some(format!("receiver answered {s}"))
                    }
                    _ => None,
                });
            cols.codes.push(c.outcome.status.map(i32::from));
            cols.completed.push(done);
            cols.counted.push(is_attempt);
            cols.durations
                .push(c.outcome.duration_ms.min(i32::MAX as u32) as i32);
            cols.bodies.push(c.outcome.body_excerpt.clone());
        }
        cols
    }

    /// Records the attempts and applies the verdicts, each only where its lease still
    /// holds (a compare-and-set in one statement whose plan the function keeps; see the
    /// migration); how many applied.
    async fn apply(&self, conn: &AsyncPgConnection) -> QueryResult<usize> {
        let mut shared = conn;
        let applied: AppliedCount = diesel::sql_query(
            "SELECT count(*) AS n FROM stratum_complete_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind::<Array<SqlUuid>, _>(&self.ids)
        .bind::<Array<SqlUuid>, _>(&self.event_ids)
        .bind::<Array<SqlUuid>, _>(&self.leases)
        .bind::<Array<Text>, _>(&self.statuses)
        .bind::<Array<Integer>, _>(&self.attempts)
        .bind::<Array<Timestamptz>, _>(&self.next)
        .bind::<Array<Nullable<Text>>, _>(&self.errors)
        .bind::<Array<Nullable<Integer>>, _>(&self.codes)
        .bind::<Array<Nullable<Timestamptz>>, _>(&self.completed)
        .bind::<Array<diesel::sql_types::Bool>, _>(&self.counted)
        .bind::<Array<Integer>, _>(&self.durations)
        .bind::<Array<Nullable<Text>>, _>(&self.bodies)
        .cached()
        .get_result(&mut shared)
        .await?;
        Ok(usize::try_from(applied.n).unwrap_or(0))
    }
}

/// Closes the breakers of `clean` (webhooks whose attempts in a batch all succeeded),
/// touching only those not already closed and clean; returns the states they left.
async fn close_clean_breakers(
    conn: &AsyncPgConnection,
    clean: &[Uuid],
) -> QueryResult<Vec<WasRow>> {
    let mut shared = conn;
    diesel::sql_query(
        "UPDATE webhook_controls k
            SET state = 'closed', consecutive_failures = 0, opened_at = NULL,
                next_probe_at = NULL, cooldown_ms = 0
           FROM (SELECT c.webhook_id, c.state AS was FROM webhook_controls c
                  WHERE c.webhook_id = ANY($1)
                    AND (c.state <> 'closed' OR c.consecutive_failures > 0)
                  ORDER BY c.webhook_id FOR UPDATE) o
          WHERE k.webhook_id = o.webhook_id
         RETURNING o.was",
    )
    .bind::<Array<SqlUuid>, _>(clean)
    .cached()
    .load::<WasRow>(&mut shared)
    .await
}

#[async_trait]
impl DeliveryQueue for PgDeliveryQueue {
    async fn claim(
        &self,
        limit: usize,
        per_webhook: usize,
        rooms: Vec<(Uuid, usize)>,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let lease_id = Uuid::now_v7();
        let limit = limit.max(1) as i64;
        let (webhooks, rooms): (Vec<Uuid>, Vec<i64>) = rooms
            .into_iter()
            .map(|(id, room)| (id, i64::try_from(room).unwrap_or(i64::MAX)))
            .unzip();
        // One statement, hence its own transaction: the lease is committed before any send.
        let conn = read_conn(&self.pool).await?;
        let rows = claim_rows(
            &conn,
            self.trace_context,
            (limit, i64::try_from(per_webhook).unwrap_or(i64::MAX)),
            (&webhooks, &rooms),
            (lease_id, lease),
        )
        .await
        .map_err(map_query_error)?;
        Ok(rows.into_iter().map(|r| r.into_claimed(lease_id)).collect())
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let now = OffsetDateTime::now_utc();
        let columns = CompletionColumns::new(&completions, now);
        let results = attempt_results(&completions);
        in_tx!(self.pool, StoreError, |conn| {
            let applied = columns.apply(conn).await?;
            disable_webhooks(conn, &columns.gone, DisabledReason::Gone, now).await?;
            if self.breaker.enabled() && !results.is_empty() {
                self.apply_breakers(conn, &results, now).await?;
            }
            Ok(applied)
        })
    }

    async fn complete_and_claim_next(
        &self,
        head: Completion,
        lease: Duration,
    ) -> Result<(bool, Option<ClaimedDelivery>), StoreError> {
        if head.verdict != Verdict::Success {
            // Only a success hands over; anything else takes the general path.
            return Ok((self.complete(vec![head]).await? == 1, None));
        }
        let webhook_id = head.webhook_id;
        let columns =
            CompletionColumns::new(std::slice::from_ref(&head), OffsetDateTime::now_utc());
        let lease_id = Uuid::now_v7();
        let conn = read_conn(&self.pool).await?;
        let mut owned = crate::pipeline::Owned::new(conn);
        let (applied, closed, next, committed) = {
            let conn = owned.conn();
            let breaker = self.breaker.enabled();
            // One round trip: BEGIN, the completion, the breaker reset, the lane's next
            // head (room 1 for this webhook, none for any other) and COMMIT.
            let ((begun, applied), (closed, next, committed)) = futures_util::future::join(
                futures_util::future::join(crate::pipeline::begin(conn), columns.apply(conn)),
                futures_util::future::join3(
                    async move {
                        if breaker {
                            close_clean_breakers(conn, &[webhook_id]).await
                        } else {
                            Ok(Vec::new())
                        }
                    },
                    claim_rows(
                        conn,
                        self.trace_context,
                        (1, 0),
                        (&[webhook_id], &[1]),
                        (lease_id, lease),
                    ),
                    crate::pipeline::commit(conn),
                ),
            )
            .await;
            begun.map_err(map_query_error)?;
            (applied, closed, next, committed)
        };
        // A failed statement aborted the transaction (the COMMIT then rolled it back); a
        // failed COMMIT leaves the outcome unknown and the connection is not reused.
        // Either way the caller records the head again, where its lease still holds.
        committed.map_err(map_query_error)?;
        owned.ended = true;
        let applied = applied.map_err(map_query_error)?;
        let closed = closed.map_err(map_query_error)?;
        let next = next.map_err(map_query_error)?;
        for was in closed {
            if let Some(from) = BreakerState::parse(&was.was) {
                self.transitions.count(from, BreakerState::Closed);
            }
        }
        Ok((
            applied == 1,
            next.into_iter().next().map(|r| r.into_claimed(lease_id)),
        ))
    }
}

impl PgDeliveryQueue {
    /// Applies a batch's attempt results to the webhooks' breakers. Webhooks with only
    /// successes are reset by one statement that touches only breakers not already closed
    /// and clean; the others are read under their row lock (in id order, as the claim locks
    /// them), moved by the breaker's rules and written back.
    async fn apply_breakers(
        &self,
        conn: &mut AsyncPgConnection,
        results: &[(Uuid, Vec<bool>)],
        now: OffsetDateTime,
    ) -> Result<(), TxError<StoreError>> {
        let clean: Vec<Uuid> = results
            .iter()
            .filter(|(_, r)| r.iter().all(|ok| *ok))
            .map(|(w, _)| *w)
            .collect();
        let mut failing: Vec<Uuid> = results
            .iter()
            .filter(|(_, r)| r.iter().any(|ok| !ok))
            .map(|(w, _)| *w)
            .collect();
        failing.sort_unstable();
        if !clean.is_empty() {
            for was in close_clean_breakers(conn, &clean).await? {
                if let Some(from) = BreakerState::parse(&was.was) {
                    self.transitions.count(from, BreakerState::Closed);
                }
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        let rows: Vec<ControlsRow> = webhook_controls::table
            .filter(webhook_controls::webhook_id.eq_any(&failing))
            .order(webhook_controls::webhook_id)
            .select(ControlsRow::as_select())
            .for_update()
            .load(conn)
            .await?;
        let mut disable = Vec::new();
        for row in rows {
            let state = BreakerState::parse(&row.state)
                .ok_or_else(|| TxError::Domain(corrupt("breaker state", &row.state)))?;
            let before = Breaker {
                state,
                consecutive_failures: u32::try_from(row.consecutive_failures).unwrap_or(0),
                opened_at: row.opened_at,
                next_probe_at: row.next_probe_at,
                cooldown_ms: row.cooldown_ms,
            };
            let Some((_, batch)) = results.iter().find(|(w, _)| *w == row.webhook_id) else {
                continue;
            };
            let change = before.record(batch, now, &self.breaker);
            for (from, to) in &change.transitions {
                self.transitions.count(*from, *to);
            }
            if change.disable {
                disable.push(row.webhook_id);
            }
            let b = change.breaker;
            diesel::update(webhook_controls::table.find(row.webhook_id))
                .set((
                    webhook_controls::state.eq(b.state.as_str()),
                    webhook_controls::consecutive_failures
                        .eq(i32::try_from(b.consecutive_failures).unwrap_or(i32::MAX)),
                    webhook_controls::opened_at.eq(b.opened_at),
                    webhook_controls::next_probe_at.eq(b.next_probe_at),
                    webhook_controls::cooldown_ms.eq(b.cooldown_ms),
                ))
                .cached()
                .execute(conn)
                .await?;
        }
        let n = disable_webhooks(conn, &disable, DisabledReason::Failing, now).await?;
        self.transitions
            .disabled
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[derive(QueryableByName)]
struct WasRow {
    #[diesel(sql_type = Text)]
    was: String,
}

#[derive(QueryableByName)]
struct AppliedCount {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Queue figures for the metrics gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, QueryableByName)]
pub struct QueueSnapshot {
    /// Pending deliveries.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Pending deliveries due now and not being sent (no live lease).
    #[diesel(sql_type = BigInt)]
    pub due: i64,
    /// Age in seconds of the oldest due delivery not being sent.
    #[diesel(sql_type = BigInt)]
    pub oldest_due_age_seconds: i64,
    /// Failed deliveries.
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    /// Inactive webhooks.
    #[diesel(sql_type = BigInt)]
    pub inactive_webhooks: i64,
    /// Webhooks whose breaker is open or half-open.
    #[diesel(sql_type = BigInt)]
    pub open_breakers: i64,
}

/// Reads the queue figures; uses the partial indexes, so it stays cheap on a big table.
pub async fn queue_snapshot(pool: &Pool) -> Result<QueueSnapshot, StoreError> {
    let mut conn = read_conn(pool).await?;
    diesel::sql_query(
        // One pass over the pending rows for the three pending figures. A row with a live
        // lease is being sent, not due (migration 18).
        "SELECT p.pending, p.due, p.oldest_due_age_seconds,
                (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed') AS failed,
                (SELECT count(*) FROM webhooks WHERE NOT active) AS inactive_webhooks,
                (SELECT count(*) FROM webhook_controls WHERE state <> 'closed') AS open_breakers
           FROM (SELECT count(*) AS pending,
                        count(*) FILTER (WHERE due) AS due,
                        coalesce(extract(epoch FROM now() - min(next_retry_at)
                                   FILTER (WHERE due))::bigint, 0)
                            AS oldest_due_age_seconds
                   FROM (SELECT next_retry_at,
                                next_retry_at <= now()
                                  AND (lease_expires_at IS NULL OR lease_expires_at <= now()) AS due
                           FROM webhook_deliveries WHERE status = 'pending') r) p",
    )
    .get_result(&mut conn)
    .await
    .map_err(map_query_error)
}
