//! Weekly partitions of events, deliveries and attempts (migration 16) against a real
//! PostgreSQL: creation ahead, the default partitions, and purge-expired dropping whole
//! weeks with exact counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use diesel::sql_types::{Bool, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::Caller;
use stratum_maintenance::{MaintenanceStore, PurgeCounts, PurgeCutoffs};
use stratum_postgres::partitions::create_partitions;
use stratum_postgres::{connect, PgMaintenanceStore};
use stratum_testkit::fixtures::WebhookRow;
use stratum_testkit::sql::{conn, count_on, exec_on};
use stratum_testkit::TestDb;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

async fn exists(c: &mut AsyncPgConnection, table: &str) -> bool {
    diesel::sql_query(format!(
        "SELECT to_regclass('stratum_partitions.{table}') IS NOT NULL AS ok"
    ))
    .get_result::<Flag>(c)
    .await
    .unwrap()
    .ok
}

/// The `YYYYMMDD` suffix of the week (Monday, UTC) `days_ago` days back.
async fn week_of(c: &mut AsyncPgConnection, days_ago: i64) -> String {
    diesel::sql_query(format!(
        "SELECT to_char(date_trunc('week', now() - interval '{days_ago} days', 'UTC') AT TIME ZONE 'UTC',
                        'YYYYMMDD') AS name"
    ))
    .get_result::<Name>(c)
    .await
    .unwrap()
    .name
}

/// `n` events minted `days_ago` days back (ids and created_at), each with one delivery to
/// `hook` in `status`, completed `completed_days_ago` back (NULL: not completed), and one
/// attempt.
async fn load(
    c: &mut AsyncPgConnection,
    hook: Uuid,
    n: i64,
    days_ago: i64,
    status: &str,
    completed_days_ago: Option<i64>,
) {
    let completed = completed_days_ago.map_or("NULL".to_owned(), |d| {
        format!("now() - interval '{d} days'")
    });
    exec_on(
        c,
        &format!(
            "WITH ev AS (
                 INSERT INTO webhook_events (id, event_type, payload, created_at)
                 SELECT stratum_uuid_v7_at(now() - interval '{days_ago} days'), 'tenant.updated',
                        '{{}}', now() - interval '{days_ago} days'
                   FROM generate_series(1, {n})
                 RETURNING id, created_at
             ), d AS (
                 INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status,
                                                 attempts, created_at, completed_at)
                 SELECT stratum_uuid_v7(), '{hook}', ev.id, 'tenant.updated', '{status}', 1,
                        ev.created_at, {completed}
                   FROM ev
                 RETURNING id, event_id
             )
             INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, duration_ms)
             SELECT stratum_uuid_v7(), d.id, d.event_id, 1, 5 FROM d"
        ),
    )
    .await;
}

async fn purge(db: &TestDb, retention_days: i64) -> PurgeCounts {
    let store = PgMaintenanceStore::new(connect(&db.url, &Default::default()).unwrap());
    let cutoff = OffsetDateTime::now_utc() - Duration::days(retention_days);
    store
        .purge(
            PurgeCutoffs {
                deliveries_and_events_before: cutoff,
                // Audit entries and consent records are not what these tests look at.
                audit_before: OffsetDateTime::UNIX_EPOCH,
                consent_before: OffsetDateTime::UNIX_EPOCH,
            },
            Caller::system().journal("maintenance.purge_expired", "maintenance"),
        )
        .await
        .unwrap()
}

async fn weeks_back(c: &mut AsyncPgConnection, days: i64) {
    let now = OffsetDateTime::now_utc();
    create_partitions(c, now - Duration::days(days), now)
        .await
        .unwrap();
}

/// An expired week goes whole (its three partitions dropped) and is counted exactly,
/// together with the rows deleted one by one elsewhere: in the week straddling nothing
/// (rows back-dated into the current week) and in the default partitions.
#[tokio::test]
async fn purge_drops_expired_weeks_and_counts_every_row() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    weeks_back(&mut c, 150).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    // 120 days old: a week that ended long before the 90-day cutoff.
    load(&mut c, hook, 300, 120, "success", Some(119)).await;
    load(&mut c, hook, 20, 120, "failed", Some(118)).await;
    let old = week_of(&mut c, 120).await;
    // Current week, back-dated: expired by their dates, deleted row by row.
    exec_on(
        &mut c,
        &format!(
            "WITH ev AS (
                 INSERT INTO webhook_events (id, event_type, payload, created_at)
                 SELECT stratum_uuid_v7(), 'tenant.updated', '{{}}', now() - interval '100 days'
                   FROM generate_series(1, 7) RETURNING id)
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, completed_at)
             SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated', 'success', now() - interval '95 days'
               FROM ev"
        ),
    )
    .await;
    // Outside every week created (1970): the default partitions, row by row.
    exec_on(
        &mut c,
        &format!(
            "INSERT INTO webhook_events (id, event_type, payload, created_at)
             VALUES ('00000000-0001-7000-8000-000000000001', 'tenant.updated', '{{}}', now() - interval '100 days'),
                    ('00000000-0001-7000-8000-000000000002', 'tenant.updated', '{{}}', now() - interval '100 days');
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, completed_at)
             VALUES (stratum_uuid_v7(), '{hook}', '00000000-0001-7000-8000-000000000001', 'tenant.updated',
                     'success', now() - interval '99 days')"
        ),
    )
    .await;
    // Recent: stays.
    load(&mut c, hook, 5, 1, "success", Some(1)).await;

    let counts = purge(&db, 90).await;
    assert_eq!(counts.deliveries, 320 + 7 + 1);
    assert_eq!(counts.events, 320 + 7 + 2);
    for t in [
        "webhook_events_",
        "webhook_deliveries_",
        "webhook_delivery_attempts_",
    ] {
        assert!(
            !exists(&mut c, &format!("{t}{old}")).await,
            "{t}{old} dropped"
        );
        assert!(
            exists(&mut c, &format!("{t}default")).await,
            "{t}default kept"
        );
    }
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_deliveries").await,
        5
    );
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_events").await,
        5
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_delivery_attempts"
        )
        .await,
        5
    );
    // The purge's own audit entry has the same counts.
    assert_eq!(
        count_on(
            &mut c,
            "SELECT (after_state->>'deliveries')::bigint AS n FROM audit_logs
              WHERE action = 'maintenance.purge_expired'"
        )
        .await,
        328
    );
    // Nothing left to purge: a second run finds nothing.
    assert_eq!(purge(&db, 90).await, PurgeCounts::default());
}

/// Nothing pending is ever purged: a pending delivery keeps its old week (and its event);
/// the week's finished rows go one by one.
#[tokio::test]
async fn a_pending_delivery_keeps_its_old_week() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    weeks_back(&mut c, 150).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    load(&mut c, hook, 40, 120, "success", Some(119)).await;
    load(&mut c, hook, 1, 120, "pending", None).await;
    let old = week_of(&mut c, 120).await;

    let counts = purge(&db, 90).await;
    assert_eq!((counts.deliveries, counts.events), (40, 40));
    assert!(exists(&mut c, &format!("webhook_deliveries_{old}")).await);
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'"
        )
        .await,
        1
    );
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_events").await,
        1
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_delivery_attempts"
        )
        .await,
        1
    );
}

/// A replay enqueues an old event again: its delivery sits in the event's week, so the
/// event stays while that delivery is recent, and the week is not dropped.
#[tokio::test]
async fn a_replayed_delivery_keeps_its_old_event() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    weeks_back(&mut c, 150).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    load(&mut c, hook, 10, 120, "success", Some(119)).await;
    let old = week_of(&mut c, 120).await;
    let replay = Uuid::now_v7();
    exec_on(
        &mut c,
        &format!(
            "INSERT INTO webhook_replays (id, webhook_id, since, until, event_types, total)
             VALUES ('{replay}', '{hook}', now() - interval '121 days', now(), '{{tenant.updated}}', 1);
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, completed_at, replay_id)
             SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated', 'success', now() - interval '1 day', '{replay}'
               FROM webhook_events ORDER BY id LIMIT 1"
        ),
    )
    .await;

    let counts = purge(&db, 90).await;
    assert_eq!((counts.deliveries, counts.events), (10, 9));
    assert!(exists(&mut c, &format!("webhook_events_{old}")).await);
    assert_eq!(
        count_on(
            &mut c,
            &format!(
                "SELECT count(*) AS n FROM webhook_events e
                  WHERE EXISTS (SELECT 1 FROM webhook_deliveries d
                                 WHERE d.event_id = e.id AND d.replay_id = '{replay}')"
            )
        )
        .await,
        1
    );
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_deliveries").await,
        1
    );
}

/// Two processes creating the same coming weeks at once both succeed, and each week is
/// created once; running it again creates nothing.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_ahead_are_created_once_by_concurrent_creators() {
    let db = TestDb::new().await;
    let (mut a, mut b) = (conn(&db.url).await, conn(&db.url).await);
    // Far enough ahead that no earlier run created them: 30 to 40 weeks from now.
    let from = OffsetDateTime::now_utc() + Duration::weeks(30);
    let until = from + Duration::weeks(10);
    let (x, y) = tokio::join!(
        create_partitions(&mut a, from, until),
        create_partitions(&mut b, from, until)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    // The week of `from` through the week holding `until`: 11 weeks.
    assert_eq!(x + y, 11);
    assert_eq!(create_partitions(&mut a, from, until).await.unwrap(), 0);
    assert_eq!(
        count_on(
            &mut a,
            "SELECT count(*) AS n FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'webhook_deliveries'::regclass"
        )
        .await,
        count_on(
            &mut a,
            "SELECT count(*) AS n FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'webhook_events'::regclass"
        )
        .await
    );
}

/// A row outside every week created lands in the default partitions (an insert never fails
/// for lack of a partition), and a week the default partitions hold rows of is left to them
/// instead of failing the creation.
#[tokio::test]
async fn rows_outside_every_week_land_in_the_default_partitions() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    // 60 weeks ahead: no week created there.
    exec_on(
        &mut c,
        &format!(
            "INSERT INTO webhook_events (id, event_type, payload)
             VALUES (stratum_uuid_v7_at(now() + interval '420 days'), 'tenant.updated', '{{}}');
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
             SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated' FROM webhook_events"
        ),
    )
    .await;
    for t in ["webhook_events", "webhook_deliveries"] {
        assert_eq!(
            count_on(
                &mut c,
                &format!(
                    "SELECT count(*) AS n FROM {t}
                      WHERE tableoid = 'stratum_partitions.{t}_default'::regclass"
                )
            )
            .await,
            1,
            "{t}"
        );
    }
    let at = OffsetDateTime::now_utc() + Duration::days(420);
    assert_eq!(create_partitions(&mut c, at, at).await.unwrap(), 0);
    // The next week is free: created.
    let next = at + Duration::weeks(1);
    assert_eq!(create_partitions(&mut c, next, next).await.unwrap(), 1);
}

/// A purge dropping weeks while a fan-out is half done: the fan-out holds the events table
/// and next wants the deliveries table, which the purge locks first. The purge gives its
/// lock back (lock timeout) instead of deadlocking: both commit, and the fan-out's new rows
/// stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_and_a_fan_out_in_flight_both_commit() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    weeks_back(&mut c, 150).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    load(&mut c, hook, 30, 120, "success", Some(119)).await;
    let old = week_of(&mut c, 120).await;

    let mut fan_out = conn(&db.url).await;
    let event = Uuid::now_v7();
    exec_on(
        &mut fan_out,
        &format!(
            "BEGIN;
             INSERT INTO webhook_events (id, event_type, payload) VALUES ('{event}', 'tenant.updated', '{{}}');"
        ),
    )
    .await;
    let purging = tokio::spawn({
        let url = db.url.clone();
        async move {
            let store = PgMaintenanceStore::new(connect(&url, &Default::default()).unwrap());
            store
                .purge(
                    PurgeCutoffs {
                        deliveries_and_events_before: OffsetDateTime::now_utc()
                            - Duration::days(90),
                        audit_before: OffsetDateTime::UNIX_EPOCH,
                        consent_before: OffsetDateTime::UNIX_EPOCH,
                    },
                    Caller::system().journal("maintenance.purge_expired", "maintenance"),
                )
                .await
        }
    });
    // Wait until the purge is at its lock: holding webhook_deliveries, waiting for
    // webhook_events (which the fan-out holds).
    let mut waited = 0;
    while count_on(
        &mut c,
        "SELECT count(*) AS n FROM pg_locks
          WHERE NOT granted AND relation = 'webhook_events'::regclass",
    )
    .await
        == 0
    {
        waited += 1;
        assert!(waited < 1000, "the purge never waited for webhook_events");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    exec_on(
        &mut fan_out,
        &format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
             VALUES (stratum_uuid_v7(), '{hook}', '{event}', 'tenant.updated');
             COMMIT;"
        ),
    )
    .await;
    let counts = purging.await.unwrap().unwrap();
    assert_eq!((counts.deliveries, counts.events), (30, 30));
    assert!(!exists(&mut c, &format!("webhook_deliveries_{old}")).await);
    assert_eq!(
        count_on(
            &mut c,
            &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE event_id = '{event}'")
        )
        .await,
        1
    );
}

/// Workers of the previous release keep working during a rolling upgrade: the old claim
/// (migration 5) and the completion without event ids (migration 14's signature) lease,
/// complete and record attempts (with their event_id) on the partitioned tables.
#[tokio::test]
async fn the_previous_releases_claim_and_completion_still_work() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    let hook = WebhookRow::new().insert_on(&mut c).await;
    load(&mut c, hook, 5, 0, "pending", None).await;
    exec_on(&mut c, "DELETE FROM webhook_delivery_attempts").await;
    exec_on(
        &mut c,
        "CREATE TEMP TABLE claimed AS
         SELECT id, '00000000-0000-0000-0000-000000000001'::uuid AS lease
           FROM stratum_claim_deliveries(50, '{}', 8, '00000000-0000-0000-0000-000000000001', 500, '1 minute')",
    )
    .await;
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM claimed").await,
        5
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM stratum_complete_deliveries(
                 ARRAY(SELECT id FROM claimed ORDER BY id), ARRAY(SELECT lease FROM claimed ORDER BY id),
                 ARRAY(SELECT 'success' FROM claimed), ARRAY(SELECT 1 FROM claimed),
                 ARRAY(SELECT now() FROM claimed), ARRAY(SELECT NULL::text FROM claimed),
                 ARRAY(SELECT 200 FROM claimed), ARRAY(SELECT now() FROM claimed),
                 ARRAY(SELECT true FROM claimed), ARRAY(SELECT 5 FROM claimed),
                 ARRAY(SELECT NULL::text FROM claimed))"
        )
        .await,
        5
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_deliveries d
               JOIN webhook_delivery_attempts a ON a.delivery_id = d.id AND a.event_id = d.event_id
              WHERE d.status = 'success'"
        )
        .await,
        5
    );
}
