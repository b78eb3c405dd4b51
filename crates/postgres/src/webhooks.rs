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
    gone_journal, ClaimedDelivery, Completion, Delivery, DeliveryAttempt, DeliveryQueue,
    DeliveryStats, DeliveryStatus, DeliveryStore, EventRef, FailedDelivery, HealthFigures, Verdict,
    Webhook, WebhookError, WebhookRef, WebhookStore, WebhookUrl,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{is_fk_violation, map_query_error};
use crate::in_tx;
use crate::journal::record;
use crate::schema::{tenants, webhook_deliveries, webhook_delivery_attempts, webhooks};
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
}

impl From<WebhookRow> for Webhook {
    fn from(r: WebhookRow) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            url: WebhookUrl::from_stored(r.url),
            events: stored_events(r.id, r.events),
            active: r.active,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
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
                    .filter(tenants::status.eq("active"))
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
        Ok(row.map(|(w, p)| (w.into(), p.as_deref().and_then(TenantPath::parse))))
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
        Ok(rows.into_iter().map(Webhook::from).collect())
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
                webhooks::version.eq(webhooks::version + 1),
            ))
            .returning(webhooks::version)
            .get_result(conn)
            .await
            .optional()?;
            let Some(version) = written else {
                return stale_or_gone(conn, w.id).await;
            };
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
}

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
                      WHERE webhook_id = $1 AND status = 'pending') AS queue_depth",
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
        })
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
            "SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.tenant_id, d.status, d.attempts,
                    d.next_retry_at, d.last_error, d.response_code, d.created_at, d.completed_at,
                    w.url AS w_url, w.tenant_id AS w_tenant_id, e.payload AS e_payload, e.created_at AS e_created_at
               FROM webhook_deliveries d
               JOIN webhooks w ON w.id = d.webhook_id
               JOIN webhook_events e ON e.id = d.event_id
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
        Ok(rows
            .into_iter()
            .map(|r| {
                let d: Delivery = r.delivery.into();
                FailedDelivery {
                    webhook: WebhookRef {
                        id: d.webhook_id,
                        url: r.w_url,
                        tenant_id: r.w_tenant_id,
                    },
                    event: EventRef {
                        id: d.event_id,
                        event_type: d.event_type.clone(),
                        tenant_id: d.tenant_id,
                        data: r.e_payload,
                        created_at: r.e_created_at,
                    },
                    delivery: d,
                }
            })
            .collect())
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
                    .filter(webhook_deliveries::status.eq("failed")),
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
                webhook_deliveries::table.filter(webhook_deliveries::status.eq("failed")),
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
                            .filter(webhook_deliveries::status.eq("failed"))
                            .filter(webhook_deliveries::webhook_id.eq_any(visible)),
                    )
                    .set(requeue())
                    .execute(conn)
                    .await?
                }
            };
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
);

fn requeue() -> Requeue {
    (
        webhook_deliveries::status.eq("pending"),
        webhook_deliveries::attempts.eq(0),
        webhook_deliveries::next_retry_at.eq(diesel::dsl::now),
        webhook_deliveries::completed_at.eq(None),
        webhook_deliveries::lease_id.eq(None),
        webhook_deliveries::lease_expires_at.eq(None),
    )
}

/// The delivery queue on PostgreSQL: `FOR UPDATE SKIP LOCKED` claims with leases,
/// compare-and-set completions, all in batches.
#[derive(Clone)]
pub struct PgDeliveryQueue {
    pool: Pool,
}

impl PgDeliveryQueue {
    /// Wires the queue.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
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
        let lease_interval =
            diesel::data_types::PgInterval::from_microseconds(lease.as_micros() as i64);
        let (webhooks, rooms): (Vec<Uuid>, Vec<i64>) = rooms
            .into_iter()
            .map(|(id, room)| (id, i64::try_from(room).unwrap_or(i64::MAX)))
            .unzip();
        // One statement, hence its own transaction: the lease is committed before any send.
        // It lives in a PL/pgSQL function so its plan is kept per connection.
        let mut conn = read_conn(&self.pool).await?;
        let rows: Vec<ClaimRow> = {
            diesel::sql_query(
                "SELECT id, attempts, webhook_id, url, secret_encrypted, event_id, event_type, tenant_id,
                        payload, event_created_at
                   FROM stratum_claim_per_webhook($1, $2, $3, $4, $5, $6)",
            )
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(i64::try_from(per_webhook).unwrap_or(i64::MAX))
            .bind::<Array<SqlUuid>, _>(&webhooks)
            .bind::<Array<BigInt>, _>(&rooms)
            .bind::<SqlUuid, _>(lease_id)
            .bind::<Interval, _>(lease_interval)
            .load(&mut conn)
            .await
            .map_err(map_query_error)?
        };
        Ok(rows
            .into_iter()
            .map(|r| ClaimedDelivery {
                id: r.id,
                lease_id,
                attempts: r.attempts,
                webhook_id: r.webhook_id,
                url: r.url,
                secret_encrypted: r.secret_encrypted,
                event_id: r.event_id,
                event_type: r.event_type,
                tenant_id: r.tenant_id,
                payload: r.payload,
                event_created_at: r.event_created_at,
            })
            .collect())
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let now = OffsetDateTime::now_utc();
        let n = completions.len();
        let mut ids = Vec::with_capacity(n);
        let mut event_ids = Vec::with_capacity(n);
        let mut leases = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
        let mut codes: Vec<Option<i32>> = Vec::with_capacity(n);
        let mut completed: Vec<Option<OffsetDateTime>> = Vec::with_capacity(n);
        let mut counted: Vec<bool> = Vec::with_capacity(n);
        let mut durations = Vec::with_capacity(n);
        let mut bodies: Vec<Option<String>> = Vec::with_capacity(n);
        let mut gone: Vec<Uuid> = Vec::new();
        for c in &completions {
            let (status, at, done, is_attempt) = match &c.verdict {
                Verdict::Success => ("success", now, Some(now), true),
                Verdict::Retry { at } => ("pending", *at, None, true),
                Verdict::Failed => ("failed", now, Some(now), true),
                Verdict::Gone => {
                    gone.push(c.webhook_id);
                    ("failed", now, Some(now), true)
                }
                Verdict::Release { at } => ("pending", *at, None, false),
            };
            ids.push(c.delivery_id);
            event_ids.push(c.event_id);
            leases.push(c.lease_id);
            statuses.push(status);
            attempts.push(c.attempt);
            next.push(at);
            errors.push(match (&c.outcome.error, c.outcome.status) {
                (Some(e), _) => Some(e.clone()),
                (None, Some(s)) if !(200..300).contains(&s) => {
                    Some(format!("receiver answered {s}"))
                }
                _ => None,
            });
            codes.push(c.outcome.status.map(i32::from));
            completed.push(done);
            counted.push(is_attempt);
            durations.push(c.outcome.duration_ms.min(i32::MAX as u32) as i32);
            bodies.push(c.outcome.body_excerpt.clone());
        }
        in_tx!(self.pool, StoreError, |conn| {
            // The compare-and-set on the lease and the attempts, in one statement whose
            // plan the function keeps (see the migration).
            let applied: AppliedCount = diesel::sql_query(
                "SELECT count(*) AS n FROM stratum_complete_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<SqlUuid>, _>(&event_ids)
            .bind::<Array<SqlUuid>, _>(&leases)
            .bind::<Array<Text>, _>(&statuses)
            .bind::<Array<Integer>, _>(&attempts)
            .bind::<Array<Timestamptz>, _>(&next)
            .bind::<Array<Nullable<Text>>, _>(&errors)
            .bind::<Array<Nullable<Integer>>, _>(&codes)
            .bind::<Array<Nullable<Timestamptz>>, _>(&completed)
            .bind::<Array<diesel::sql_types::Bool>, _>(&counted)
            .bind::<Array<Integer>, _>(&durations)
            .bind::<Array<Nullable<Text>>, _>(&bodies)
            .get_result(conn)
            .await?;
            if !gone.is_empty() {
                // 410 Gone: the receiver asked us to stop. Read what is replaced under the
                // row lock, so the system's audit entry is one more link of the chain.
                let before: Vec<WebhookRow> = webhooks::table
                    .filter(webhooks::id.eq_any(&gone))
                    .filter(webhooks::active.eq(true))
                    .select(WebhookRow::as_select())
                    .for_update()
                    .load(conn)
                    .await?;
                if !before.is_empty() {
                    let ids: Vec<Uuid> = before.iter().map(|w| w.id).collect();
                    diesel::update(webhooks::table.filter(webhooks::id.eq_any(&ids)))
                        .set((
                            webhooks::active.eq(false),
                            webhooks::updated_at.eq(now),
                            webhooks::version.eq(webhooks::version + 1),
                        ))
                        .execute(conn)
                        .await?;
                    for w in before {
                        record(conn, &gone_journal(&Webhook::from(w), now)).await?;
                    }
                }
            }
            Ok(usize::try_from(applied.n).unwrap_or(0))
        })
    }
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
}

/// Reads the queue figures; uses the partial indexes, so it stays cheap on a big table.
pub async fn queue_snapshot(pool: &Pool) -> Result<QueueSnapshot, StoreError> {
    let mut conn = read_conn(pool).await?;
    diesel::sql_query(
        // One pass over the pending rows for the three pending figures. A row with a live
        // lease is being sent, not due (migration 18).
        "SELECT p.pending, p.due, p.oldest_due_age_seconds,
                (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed') AS failed,
                (SELECT count(*) FROM webhooks WHERE NOT active) AS inactive_webhooks
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
