//! Migration 16 converts a database holding rows from before it: every row moves into the
//! weekly partitions of its event, and the queue and the purge work on them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::MigrationHarness;
use stratum_core::Caller;
use stratum_maintenance::{MaintenanceStore, PurgeCutoffs};
use stratum_postgres::migrate::MIGRATIONS;
use stratum_postgres::{connect, run_migrations, PgMaintenanceStore};
use stratum_testkit::sql::count_on;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// An empty database of this checkout's test prefix, dropped at the end.
struct Scratch {
    name: String,
    url: String,
}

impl Scratch {
    async fn new() -> Self {
        let name = format!(
            "{}{}",
            stratum_testkit::db_prefix(),
            Uuid::new_v4().simple()
        );
        let server = stratum_testkit::server_url();
        let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: format!("{server}/{name}"),
            name,
        }
    }

    async fn drop(self) {
        let server = stratum_testkit::server_url();
        let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

/// Applies the embedded migrations up to `last` (a version) only.
async fn migrate_up_to(url: &str, last: &'static str) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .unwrap();
        // Creates the migrations table.
        conn.applied_migrations().unwrap();
        let all = MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap();
        for m in all
            .iter()
            .filter(|m| m.name().version().to_string().as_str() <= last)
        {
            conn.run_migration(m).unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn migration_16_moves_existing_rows_into_weekly_partitions() {
    let db = Scratch::new().await;
    migrate_up_to(&db.url, "00000000000014").await;
    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    let hook = Uuid::now_v7();
    // The tables as they were: 200 events from 120 days ago with finished deliveries and
    // one attempt each, 3 recent events with pending deliveries, one event with a random
    // (v4) id, and a replay delivery of an old event.
    c.batch_execute(&format!(
        "INSERT INTO webhooks (id, url, events, secret_encrypted)
         VALUES ('{hook}', 'https://example.com/h', '{{tenant.updated}}', 'v1:x:y');
         CREATE TEMP TABLE minted AS
         SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  PLACING substring(int8send(floor(extract(epoch FROM now() - interval '120 days') * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid AS id
           FROM generate_series(1, 200);
         INSERT INTO webhook_events (id, event_type, payload, created_at)
         SELECT id, 'tenant.updated', '{{}}', now() - interval '120 days' FROM minted;
         INSERT INTO webhook_events (id, event_type, payload)
         SELECT stratum_uuid_v7(), 'tenant.updated', '{{}}' FROM generate_series(1, 3);
         INSERT INTO webhook_events (id, event_type, payload) VALUES (gen_random_uuid(), 'tenant.updated', '{{}}');
         INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, completed_at)
         SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated', 'success', 1, now() - interval '119 days'
           FROM minted;
         INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
         SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated'
           FROM webhook_events WHERE created_at > now() - interval '1 day';
         INSERT INTO webhook_replays (id, webhook_id, since, until, event_types, total)
         VALUES ('{hook}', '{hook}', now() - interval '121 days', now(), '{{tenant.updated}}', 1);
         INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, replay_id)
         SELECT stratum_uuid_v7(), '{hook}', id, 'tenant.updated', '{hook}' FROM minted ORDER BY id LIMIT 1;
         INSERT INTO webhook_delivery_attempts (id, delivery_id, attempt, duration_ms)
         SELECT stratum_uuid_v7(), id, 1, 5 FROM webhook_deliveries WHERE status = 'success';"
    ))
    .await
    .unwrap();
    drop(c);

    run_migrations(&db.url).await.unwrap();
    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_events").await,
        204
    );
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_deliveries").await,
        205
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_delivery_attempts"
        )
        .await,
        200
    );
    // Every row in a weekly partition but the v4 event's and its delivery's; deliveries and
    // attempts in their event's week.
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n FROM webhook_events
              WHERE tableoid = 'stratum_partitions.webhook_events_default'::regclass"
        )
        .await,
        1
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n
               FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
              WHERE substring(d.tableoid::regclass::text FROM '_([0-9]{8}|default)$')
                 <> substring(e.tableoid::regclass::text FROM '_([0-9]{8}|default)$')"
        )
        .await,
        0
    );
    assert_eq!(
        count_on(
            &mut c,
            "SELECT count(*) AS n
               FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
              WHERE a.event_id <> d.event_id"
        )
        .await,
        0
    );

    // The purge: the old week holds the replay's pending delivery, so its 200 finished
    // deliveries go row by row, and 199 events (the replayed one stays).
    let store = PgMaintenanceStore::new(connect(&db.url, &Default::default()).unwrap());
    let counts = store
        .purge(
            PurgeCutoffs {
                deliveries_and_events_before: OffsetDateTime::now_utc() - Duration::days(90),
                audit_before: OffsetDateTime::UNIX_EPOCH,
                consent_before: OffsetDateTime::UNIX_EPOCH,
            },
            Caller::system().journal("maintenance.purge_expired", "maintenance"),
        )
        .await
        .unwrap();
    assert_eq!((counts.deliveries, counts.events), (200, 199));
    // Once the replay's delivery is finished too, the week goes whole.
    let weeks =
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'webhook_events'::regclass";
    let before = count_on(&mut c, weeks).await;
    c.batch_execute(
        "UPDATE webhook_deliveries SET status = 'success', completed_at = now() - interval '100 days'
          WHERE replay_id IS NOT NULL",
    )
    .await
    .unwrap();
    let counts = store
        .purge(
            PurgeCutoffs {
                deliveries_and_events_before: OffsetDateTime::now_utc() - Duration::days(90),
                audit_before: OffsetDateTime::UNIX_EPOCH,
                consent_before: OffsetDateTime::UNIX_EPOCH,
            },
            Caller::system().journal("maintenance.purge_expired", "maintenance"),
        )
        .await
        .unwrap();
    assert_eq!((counts.deliveries, counts.events), (1, 1));
    assert_eq!(count_on(&mut c, weeks).await, before - 1);
    assert_eq!(
        count_on(&mut c, "SELECT count(*) AS n FROM webhook_events").await,
        4
    );
    drop(c);
    db.drop().await;
}
