//! Replay jobs on PostgreSQL: the job row is the cursor, and every batch is enqueued in the
//! same short transaction that advances it, so a restart resumes exactly where the last
//! commit left off (and the partial unique index on `(replay_id, event_id)` forbids a
//! second copy even if that reasoning were wrong).

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::{new_id, Journal, StoreError};
use stratum_webhooks::{Replay, ReplayProgress, ReplayStatus, ReplayStore, WebhookError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{is_fk_violation, map_query_error};
use crate::in_tx;
use crate::journal::record;
use crate::schema::webhook_replays;
use crate::tx::{read_conn, TxError};
use crate::Pool;

/// Replay jobs on PostgreSQL.
#[derive(Clone)]
pub struct PgReplayStore {
    pool: Pool,
}

impl PgReplayStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhook_replays)]
struct ReplayRow {
    id: Uuid,
    webhook_id: Uuid,
    since: OffsetDateTime,
    until: OffsetDateTime,
    events: Option<Vec<Option<String>>>,
    status: String,
    total: i64,
    enqueued: i64,
    created_at: OffsetDateTime,
    completed_at: Option<OffsetDateTime>,
}

impl From<ReplayRow> for Replay {
    fn from(r: ReplayRow) -> Self {
        Self {
            id: r.id,
            webhook_id: r.webhook_id,
            since: r.since,
            until: r.until,
            events: r.events.map(|e| e.into_iter().flatten().collect()),
            status: ReplayStatus::parse(&r.status).unwrap_or(ReplayStatus::Running),
            total: r.total,
            enqueued: r.enqueued,
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

/// The events a replay covers, after a keyset position: in the window's upper bound, of
/// the job's types, in the webhook's tenant audience today (the same rule as the live
/// fan-out, `stratum_record`: an event reaches the webhooks of its tenant's ancestry, so a
/// tenant webhook hears its tenant and every descendant; a global one hears everything).
/// Binds: $1 cursor created_at, $2 cursor id, $3 upper bound, $4 types, $5 the LIKE
/// pattern of the webhook tenant's subtree (null: global).
const MATCHING: &str = "FROM webhook_events e
     WHERE (e.created_at, e.id) > ($1, $2) AND e.created_at < $3
       AND e.event_type = ANY($4)
       AND ($5::text IS NULL
            OR e.tenant_id IN (SELECT t.id FROM tenants t WHERE t.ancestry_path LIKE $5))";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Job {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    since: OffsetDateTime,
    #[diesel(sql_type = Timestamptz)]
    upper: OffsetDateTime,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    event_types: Vec<Option<String>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    cursor_created_at: Option<OffsetDateTime>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    cursor_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    path: Option<String>,
}

#[derive(QueryableByName)]
struct EventKey {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    tenant_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    created_at: OffsetDateTime,
}

/// Counts the events a new job covers.
async fn count_matching(
    conn: &mut AsyncPgConnection,
    since: OffsetDateTime,
    upper: OffsetDateTime,
    types: &[String],
    pattern: Option<&str>,
) -> QueryResult<i64> {
    let c: Count = diesel::sql_query(format!("SELECT count(*) AS n {MATCHING}"))
        .bind::<Timestamptz, _>(since)
        .bind::<SqlUuid, _>(Uuid::nil())
        .bind::<Timestamptz, _>(upper)
        .bind::<Array<Text>, _>(types)
        .bind::<Nullable<Text>, _>(pattern)
        .get_result(conn)
        .await?;
    Ok(c.n)
}

#[async_trait]
impl ReplayStore for PgReplayStore {
    async fn create(
        &self,
        replay: Replay,
        event_types: Vec<String>,
        mut journal: Journal,
    ) -> Result<Replay, WebhookError> {
        in_tx!(self.pool, WebhookError, |conn| {
            // The webhook, its subscriptions and its tenant's path as they are now: a
            // replay covers only what the webhook still subscribes to when the job commits.
            let locked: Option<(Option<Uuid>, Vec<Option<String>>)> =
                crate::schema::webhooks::table
                    .find(replay.webhook_id)
                    .select((
                        crate::schema::webhooks::tenant_id,
                        crate::schema::webhooks::events,
                    ))
                    .for_share()
                    .first(conn)
                    .await
                    .optional()?;
            let Some((owner, subscribed)) = locked else {
                return Err(TxError::Domain(WebhookError::NotFound));
            };
            let event_types: Vec<String> = event_types
                .into_iter()
                .filter(|t| subscribed.iter().flatten().any(|s| s == t))
                .collect();
            let path: Option<String> = match owner {
                None => None,
                Some(t) => Some(
                    crate::schema::tenants::table
                        .find(t)
                        .select(crate::schema::tenants::ancestry_path)
                        .first(conn)
                        .await?,
                ),
            };
            let upper = replay.until.min(replay.created_at);
            let pattern = path.as_deref().map(crate::tenancy::like_prefix);
            // Starting at `since` exactly: the keyset's "after (since, nil)".
            let total =
                count_matching(conn, replay.since, upper, &event_types, pattern.as_deref()).await?;
            let mut stored = replay;
            stored.total = total;
            let types: Vec<Option<String>> = event_types.into_iter().map(Some).collect();
            let events: Option<Vec<Option<String>>> = stored
                .events
                .as_ref()
                .map(|e| e.iter().cloned().map(Some).collect());
            diesel::insert_into(webhook_replays::table)
                .values((
                    webhook_replays::id.eq(stored.id),
                    webhook_replays::webhook_id.eq(stored.webhook_id),
                    webhook_replays::since.eq(stored.since),
                    webhook_replays::until.eq(stored.until),
                    webhook_replays::events.eq(events),
                    webhook_replays::event_types.eq(types),
                    webhook_replays::status.eq(ReplayStatus::Running.as_str()),
                    webhook_replays::total.eq(total),
                    webhook_replays::created_at.eq(stored.created_at),
                ))
                .execute(conn)
                .await
                .map_err(|e| {
                    if is_fk_violation(&e) {
                        TxError::Domain(WebhookError::NotFound)
                    } else {
                        TxError::Db(e)
                    }
                })?;
            journal.after = Some(serde_json::to_value(&stored).unwrap_or_default());
            record(conn, &journal).await?;
            Ok(stored)
        })
    }

    async fn get(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Replay>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<ReplayRow> = webhook_replays::table
            .find(id)
            .filter(webhook_replays::webhook_id.eq(webhook_id))
            .select(ReplayRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        Ok(row.map(Replay::from))
    }

    async fn step(
        &self,
        batch: i64,
        max_backlog: i64,
    ) -> Result<Option<ReplayProgress>, StoreError> {
        in_tx!(self.pool, StoreError, |conn| {
            // One running job no other worker holds and whose own backlog is small enough:
            // replayed deliveries queue behind live ones only up to `max_backlog`.
            let job: Option<Job> = diesel::sql_query(
                "SELECT r.id, r.webhook_id, r.since, LEAST(r.until, r.created_at) AS upper,
                        r.event_types, r.cursor_created_at, r.cursor_id,
                        (SELECT t.ancestry_path FROM webhooks w JOIN tenants t ON t.id = w.tenant_id
                          WHERE w.id = r.webhook_id) AS path
                   FROM webhook_replays r
                  WHERE r.status = 'running'
                    AND (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries d
                                                WHERE d.replay_id = r.id AND d.status = 'pending'
                                                LIMIT $1) b) < $1
                  ORDER BY r.created_at, r.id
                  LIMIT 1
                    FOR UPDATE OF r SKIP LOCKED",
            )
            .bind::<BigInt, _>(max_backlog)
            .get_result(conn)
            .await
            .optional()?;
            let Some(job) = job else { return Ok(None) };
            let types: Vec<String> = job.event_types.into_iter().flatten().collect();
            let pattern = job.path.as_deref().map(crate::tenancy::like_prefix);
            let (after_at, after_id) = match (job.cursor_created_at, job.cursor_id) {
                (Some(at), Some(id)) => (at, id),
                _ => (job.since, Uuid::nil()),
            };
            let rows: Vec<EventKey> = diesel::sql_query(format!(
                "SELECT e.id, e.event_type, e.tenant_id, e.created_at {MATCHING}
                  ORDER BY e.created_at, e.id LIMIT $6"
            ))
            .bind::<Timestamptz, _>(after_at)
            .bind::<SqlUuid, _>(after_id)
            .bind::<Timestamptz, _>(job.upper)
            .bind::<Array<Text>, _>(&types)
            .bind::<Nullable<Text>, _>(pattern.as_deref())
            .bind::<BigInt, _>(batch)
            .load(conn)
            .await?;
            let n = rows.len();
            if let Some(last) = rows.last() {
                let (last_at, last_id) = (last.created_at, last.id);
                // Delivery ids are UUIDv7 minted in event order, and each one is due a
                // microsecond after the one before: the queue hands them out oldest first.
                let ids: Vec<Uuid> = rows.iter().map(|_| new_id()).collect();
                let events: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                let kinds: Vec<String> = rows.iter().map(|r| r.event_type.clone()).collect();
                let tenants: Vec<Option<Uuid>> = rows.iter().map(|r| r.tenant_id).collect();
                diesel::sql_query(
                    // A FIFO webhook's replayed deliveries join its lane at the end.
                    "INSERT INTO webhook_deliveries
                            (id, webhook_id, event_id, event_type, tenant_id, replay_id, next_retry_at,
                             lane_seq)
                     SELECT u.did, $1, u.eid, u.etype, u.tid, $2,
                            now() + u.ord * interval '1 microsecond',
                            CASE WHEN w.ordering = 'fifo' THEN nextval('webhook_lane_seq') END
                       FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::uuid[])
                            WITH ORDINALITY AS u(did, eid, etype, tid, ord)
                       JOIN webhooks w ON w.id = $1
                      ORDER BY u.ord",
                )
                .bind::<SqlUuid, _>(job.webhook_id)
                .bind::<SqlUuid, _>(job.id)
                .bind::<Array<SqlUuid>, _>(&ids)
                .bind::<Array<SqlUuid>, _>(&events)
                .bind::<Array<Text>, _>(&kinds)
                .bind::<Array<Nullable<SqlUuid>>, _>(&tenants)
                .execute(conn)
                .await?;
                diesel::update(webhook_replays::table.find(job.id))
                    .set((
                        webhook_replays::cursor_created_at.eq(Some(last_at)),
                        webhook_replays::cursor_id.eq(Some(last_id)),
                        webhook_replays::enqueued.eq(webhook_replays::enqueued + n as i64),
                    ))
                    .execute(conn)
                    .await?;
                crate::wake::mark_or_notify(conn).await?;
            }
            let completed = (n as i64) < batch;
            if completed {
                diesel::sql_query(
                    "UPDATE webhook_replays SET status = 'completed', completed_at = now() WHERE id = $1",
                )
                .bind::<SqlUuid, _>(job.id)
                .execute(conn)
                .await?;
            }
            Ok(Some(ReplayProgress {
                replay_id: job.id,
                enqueued: n as u64,
                completed,
            }))
        })
    }
}
