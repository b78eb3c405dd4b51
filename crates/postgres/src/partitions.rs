//! The weekly partitions of the outbox and the delivery history (migration 16).
//!
//! `webhook_events` (by id), `webhook_deliveries` and `webhook_delivery_attempts` (by
//! event_id) are partitioned on the same weekly bounds of the event's UUIDv7, in the schema
//! `stratum_partitions`: `<table>_<YYYYMMDD of the week's Monday>`, plus a `<table>_default`
//! partition each for rows outside every week created. The server creates the current week
//! and the next ones at start-up and then hourly ([`run_partition_keeper`]), so rows land in
//! weekly partitions that purge-expired can drop whole.

use std::time::Duration;

use diesel::sql_types::{Bool, Integer, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::StoreError;
use time::OffsetDateTime;

use crate::error::{map_pool_error, map_query_error};
use crate::Pool;

/// How far ahead the weeks are created: the current week and every week starting within
/// this many days. A server down for longer than this writes into the default partitions
/// (correct, only purged row by row) until it runs again.
pub const DAYS_AHEAD: i32 = 14;

/// How often the keeper creates the coming weeks (they exist [`DAYS_AHEAD`] days ahead, so
/// an hour is plenty).
pub const KEEPER_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(QueryableByName)]
struct Created {
    #[diesel(sql_type = Integer)]
    n: i32,
}

/// Creates the missing weekly partitions from the week of `from` to the week holding
/// `until`; returns how many weeks it created. Idempotent and safe to run from several
/// processes at once (the SQL function serializes them on an advisory lock).
pub async fn create_partitions(
    conn: &mut AsyncPgConnection,
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> diesel::QueryResult<i32> {
    let created: Created = diesel::sql_query("SELECT stratum_create_partitions($1, $2) AS n")
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(until)
        .get_result(conn)
        .await?;
    Ok(created.n)
}

/// Creates the current week and those starting within [`DAYS_AHEAD`] days, where missing.
pub async fn create_partitions_ahead(pool: &Pool) -> Result<i32, StoreError> {
    let mut conn = pool.get().await.map_err(map_pool_error)?;
    let now = OffsetDateTime::now_utc();
    create_partitions(
        &mut conn,
        now,
        now + time::Duration::days(DAYS_AHEAD.into()),
    )
    .await
    .map_err(map_query_error)
}

/// Creates the coming weeks every `interval` until `stop` turns true, the first time one
/// `interval` from now: start-up has just run [`create_partitions_ahead`] itself. Failures
/// are logged and retried at the next tick: rows meanwhile go to the default partitions, so
/// nothing is lost.
pub async fn run_partition_keeper(
    pool: Pool,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        match create_partitions_ahead(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(weeks = n, "partitions created ahead"),
            Err(e) => tracing::warn!(error = %e, "creating the coming partitions failed; retrying"),
        }
    }
}

/// One week of partitions (or the default ones).
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Week {
    /// `YYYYMMDD` of the week's Monday, or `default`.
    #[diesel(sql_type = Text)]
    pub suffix: String,
    /// The week ended before the cutoff: a candidate for dropping whole.
    #[diesel(sql_type = Bool)]
    pub ended: bool,
}

impl Week {
    pub(crate) fn events(&self) -> String {
        format!("stratum_partitions.webhook_events_{}", self.suffix)
    }

    pub(crate) fn deliveries(&self) -> String {
        format!("stratum_partitions.webhook_deliveries_{}", self.suffix)
    }

    pub(crate) fn attempts(&self) -> String {
        format!(
            "stratum_partitions.webhook_delivery_attempts_{}",
            self.suffix
        )
    }
}

/// Every week of partitions there is (and the default ones), oldest first; `ended` when the
/// week ended at or before `cutoff`.
pub(crate) async fn weeks(
    conn: &mut AsyncPgConnection,
    cutoff: OffsetDateTime,
) -> diesel::QueryResult<Vec<Week>> {
    diesel::sql_query(
        "SELECT s.suffix,
                CASE WHEN s.suffix = 'default' THEN false
                     ELSE (to_date(s.suffix, 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC')
                          + interval '168 hours' <= $1
                END AS ended
           FROM (SELECT substring(c.relname FROM '^webhook_events_([0-9]{8}|default)$') AS suffix
                   FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'webhook_events'::regclass) s
          WHERE s.suffix IS NOT NULL
          ORDER BY s.suffix",
    )
    .bind::<Timestamptz, _>(cutoff)
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

/// True when every row of `week` is expired at `cutoff`: no delivery pending, every delivery
/// finished before the cutoff, every event created before it. (Its deliveries are all the
/// deliveries of its events, replayed ones included: they share the partition key.)
pub(crate) async fn all_expired(
    conn: &mut AsyncPgConnection,
    week: &Week,
    cutoff: OffsetDateTime,
) -> diesel::QueryResult<bool> {
    let (d, e) = (week.deliveries(), week.events());
    let pending = crate::status::DELIVERY_PENDING;
    let flag: Flag = diesel::sql_query(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {d} WHERE status = '{pending}')
            AND NOT EXISTS (SELECT 1 FROM {d} WHERE status <> '{pending}'
                                                AND (completed_at >= $1 OR completed_at IS NULL))
            AND NOT EXISTS (SELECT 1 FROM {e} WHERE created_at >= $1) AS ok"
    ))
    .bind::<Timestamptz, _>(cutoff)
    .get_result(conn)
    .await?;
    Ok(flag.ok)
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    deliveries: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    events: i64,
}

/// Counts `week`'s deliveries and events, then drops its three partitions (attempts,
/// deliveries, events: each references the next). The caller holds the parents locked.
pub(crate) async fn drop_week(
    conn: &mut AsyncPgConnection,
    week: &Week,
) -> diesel::QueryResult<(u64, u64)> {
    let counts: Counts = diesel::sql_query(format!(
        "SELECT (SELECT count(*) FROM {}) AS deliveries, (SELECT count(*) FROM {}) AS events",
        week.deliveries(),
        week.events()
    ))
    .get_result(conn)
    .await?;
    diesel::sql_query(format!(
        "DROP TABLE {}, {}, {}",
        week.attempts(),
        week.deliveries(),
        week.events()
    ))
    .execute(conn)
    .await?;
    Ok((counts.deliveries as u64, counts.events as u64))
}
