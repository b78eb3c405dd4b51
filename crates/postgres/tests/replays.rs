//! Replay jobs against a real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use stratum_core::Caller;
use stratum_postgres::{connect, PgReplayStore};
use stratum_testkit::fixtures::WebhookRow;
use stratum_testkit::sql::exec;
use stratum_testkit::TestDb;
use stratum_webhooks::{Replay, ReplayStatus, ReplayStore};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

#[derive(QueryableByName)]
struct Job {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    event_types: Vec<Option<String>>,
}

/// The job covers what the webhook subscribes to when the job commits: a type the service
/// read before a concurrent PATCH narrowed the subscriptions is neither counted nor kept.
#[tokio::test]
async fn a_replay_covers_only_what_the_webhook_subscribes_to_at_its_commit() {
    let db = TestDb::new().await;
    // Subscribed to tenant.updated only (tenant.created was dropped by a PATCH meanwhile).
    let hook = WebhookRow::new().insert(&db.url).await;
    exec(
        &db.url,
        "INSERT INTO webhook_events (id, event_type, payload, created_at)
         SELECT stratum_uuid_v7(), t, '{}'::jsonb, now() - interval '1 minute'
           FROM unnest(ARRAY['tenant.updated', 'tenant.updated', 'tenant.updated',
                             'tenant.created', 'tenant.created']) t",
    )
    .await;
    let now = OffsetDateTime::now_utc();
    let replay = Replay {
        id: Uuid::now_v7(),
        webhook_id: hook,
        since: now - Duration::hours(1),
        until: now,
        events: None,
        status: ReplayStatus::Running,
        total: 0,
        enqueued: 0,
        created_at: now,
        completed_at: None,
    };
    let store = PgReplayStore::new(connect(&db.url, &Default::default()).unwrap());
    let journal = Caller::system().journal("webhook.replayed", "webhook");
    let stored = store
        .create(
            replay.clone(),
            vec!["tenant.updated".into(), "tenant.created".into()],
            journal,
        )
        .await
        .unwrap();
    assert_eq!(stored.total, 3, "only the still-subscribed events count");
    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    let job: Job =
        diesel::sql_query("SELECT total, event_types FROM webhook_replays WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(replay.id)
            .get_result(&mut c)
            .await
            .unwrap();
    assert_eq!(job.total, 3);
    assert_eq!(job.event_types, vec![Some("tenant.updated".to_owned())]);
}
