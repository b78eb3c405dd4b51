//! Migrations and the delivery queue against a real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use stratum_postgres::{connect, migrations_current, run_migrations, PgDeliveryQueue, Pool};
use stratum_testkit::fixtures::{enqueue, WebhookRow};
use stratum_testkit::sql::{conn, count, count_on, exec};
use stratum_testkit::TestDb;
use stratum_webhooks::{AttemptOutcome, Completion, DeliveryQueue, Verdict};
use time::OffsetDateTime;
use uuid::Uuid;

fn pool(db: &TestDb) -> Pool {
    connect(&db.url, &Default::default()).unwrap()
}

fn done(d: &stratum_webhooks::ClaimedDelivery, verdict: Verdict) -> Completion {
    Completion {
        delivery_id: d.id,
        event_id: d.event_id,
        lease_id: d.lease_id,
        webhook_id: d.webhook_id,
        attempt: if matches!(verdict, Verdict::Release { .. }) {
            d.attempts
        } else {
            d.attempts + 1
        },
        outcome: AttemptOutcome {
            status: Some(200),
            duration_ms: 3,
            ..Default::default()
        },
        verdict,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_do_not_race() {
    let db = TestDb::new().await;
    // A fresh, empty database beside the migrated one.
    let empty = format!("{}_empty", db.name());
    exec(&db.url, &format!("CREATE DATABASE {empty}")).await;
    let url = db.url.replace(db.name(), &empty);
    let (a, b) = tokio::join!(run_migrations(&url), run_migrations(&url));
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .count();
    assert_eq!(
        a.unwrap() + b.unwrap(),
        migrations,
        "each migration ran exactly once"
    );
    let mut c = conn(&url).await;
    assert!(migrations_current(&mut c).await.unwrap());
    drop(c);
    assert_eq!(run_migrations(&url).await.unwrap(), 0);
    exec(&db.url, &format!("DROP DATABASE {empty} WITH (FORCE)")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claims_are_disjoint_and_respect_limits() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let (w1, w2, off) = (
        WebhookRow::new().active(true).insert(&db.url).await,
        WebhookRow::new().active(true).insert(&db.url).await,
        WebhookRow::new().active(false).insert(&db.url).await,
    );
    enqueue(&db.url, w1, 300).await;
    enqueue(&db.url, w2, 300).await;
    enqueue(&db.url, off, 50).await;
    let lease = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        q.claim(200, 1000, vec![], lease),
        q.claim(200, 1000, vec![], lease)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<Uuid> = a.iter().chain(b.iter()).map(|d| d.id).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no delivery was claimed twice");
    assert!(
        a.iter().chain(b.iter()).all(|d| d.webhook_id != off),
        "inactive webhooks are never claimed"
    );

    let per = q.claim(100, 5, vec![], lease).await.unwrap();
    let from_w1 = per.iter().filter(|d| d.webhook_id == w1).count();
    assert!(
        from_w1 <= 5 && per.len() <= 10,
        "per-webhook cap holds: {} of {}",
        from_w1,
        per.len()
    );
    let skipped = q.claim(100, 100, vec![(w1, 0)], lease).await.unwrap();
    assert!(!skipped.is_empty() && skipped.iter().all(|d| d.webhook_id == w2));
    let claimed = &skipped[0];
    assert!(claimed.payload["n"].as_i64().is_some());
    assert_eq!(claimed.secret_encrypted, "v1:x:y");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_are_compare_and_set_on_the_lease() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = WebhookRow::new().active(true).insert(&db.url).await;
    enqueue(&db.url, w, 4).await;
    let claimed = q
        .claim(10, 10, vec![], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    assert!(
        q.claim(10, 10, vec![], Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "leased rows are not due"
    );

    let mut stale = done(&claimed[0], Verdict::Success);
    stale.lease_id = Uuid::now_v7();
    assert_eq!(
        q.complete(vec![stale]).await.unwrap(),
        0,
        "a foreign lease writes nothing"
    );

    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let applied = q
        .complete(vec![
            done(&claimed[0], Verdict::Success),
            done(&claimed[1], Verdict::Retry { at: later }),
            done(&claimed[2], Verdict::Gone),
            done(
                &claimed[3],
                Verdict::Release {
                    at: OffsetDateTime::now_utc(),
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(applied, 4);
    assert_eq!(
        q.complete(vec![done(&claimed[0], Verdict::Failed)])
            .await
            .unwrap(),
        0,
        "a completion applies once"
    );
    let url = &db.url;
    assert_eq!(count(url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE id = '{}' AND status = 'success' AND attempts = 1 AND completed_at IS NOT NULL", claimed[0].id)).await, 1);
    assert_eq!(count(url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE id = '{}' AND status = 'pending' AND attempts = 1 AND next_retry_at > now() + interval '50 minutes'", claimed[1].id)).await, 1);
    assert_eq!(count(url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE id = '{}' AND status = 'failed'", claimed[2].id)).await, 1);
    assert_eq!(
        count(
            url,
            &format!("SELECT count(*) AS n FROM webhooks WHERE id = '{w}' AND NOT active")
        )
        .await,
        1,
        "410 deactivates"
    );
    assert_eq!(count(url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE id = '{}' AND status = 'pending' AND attempts = 0", claimed[3].id)).await, 1, "a release is not an attempt");
    assert_eq!(
        count(url, "SELECT count(*) AS n FROM webhook_delivery_attempts").await,
        3,
        "three real attempts recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_leases_become_claimable_again() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = WebhookRow::new().active(true).insert(&db.url).await;
    enqueue(&db.url, w, 3).await;
    let first = q
        .claim(10, 10, vec![], Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = q
        .claim(10, 10, vec![], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(second.len(), 3, "a crashed worker's deliveries come back");
    assert!(second.iter().all(|d| d.lease_id != first[0].lease_id));
    // The first worker, late, cannot overwrite the second's result.
    assert_eq!(
        q.complete(first.iter().map(|d| done(d, Verdict::Failed)).collect())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        q.complete(second.iter().map(|d| done(d, Verdict::Success)).collect())
            .await
            .unwrap(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_backlog_of_a_skipped_or_inactive_webhook_starves_no_one() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let (slow, off, fresh) = (
        WebhookRow::new().active(true).insert(&db.url).await,
        WebhookRow::new().active(false).insert(&db.url).await,
        WebhookRow::new().active(true).insert(&db.url).await,
    );
    // The slow and inactive webhooks' deliveries are older than anything else.
    enqueue(&db.url, slow, 2000).await;
    enqueue(&db.url, off, 2000).await;
    exec(
        &db.url,
        "UPDATE webhook_deliveries SET next_retry_at = now() - interval '1 hour'",
    )
    .await;
    enqueue(&db.url, fresh, 10).await;
    let got = q
        .claim(8, 8, vec![(slow, 0)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), 8, "the fresh webhook's deliveries are claimed");
    assert!(got.iter().all(|d| d.webhook_id == fresh));
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_go_round_robin_across_webhooks_within_their_rooms() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let (big, b, c) = (
        WebhookRow::new().active(true).insert(&db.url).await,
        WebhookRow::new().active(true).insert(&db.url).await,
        WebhookRow::new().active(true).insert(&db.url).await,
    );
    // The big webhook's backlog is older than everything else.
    enqueue(&db.url, big, 1000).await;
    exec(
        &db.url,
        "UPDATE webhook_deliveries SET next_retry_at = now() - interval '1 hour'",
    )
    .await;
    enqueue(&db.url, b, 50).await;
    enqueue(&db.url, c, 50).await;
    let lease = Duration::from_secs(60);
    let of = |got: &[stratum_webhooks::ClaimedDelivery], w: Uuid| {
        got.iter().filter(|d| d.webhook_id == w).count()
    };

    // Every webhook's first delivery before any webhook's second: 30 are 10 each.
    let got = q.claim(30, 100, vec![], lease).await.unwrap();
    assert_eq!((of(&got, big), of(&got, b), of(&got, c)), (10, 10, 10));
    // A room bounds a listed webhook; the others take the default.
    let got = q.claim(100, 7, vec![(big, 3)], lease).await.unwrap();
    assert_eq!((of(&got, big), of(&got, b), of(&got, c)), (3, 7, 7));
    // A webhook without room costs the others nothing: they get all they have left.
    let got = q.claim(1000, 1000, vec![(big, 0)], lease).await.unwrap();
    assert_eq!((of(&got, big), of(&got, b), of(&got, c)), (0, 33, 33));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claimers_never_lease_a_delivery_twice() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let mut hooks = Vec::new();
    for _ in 0..10 {
        let w = WebhookRow::new().active(true).insert(&db.url).await;
        enqueue(&db.url, w, 200).await;
        hooks.push(w);
    }
    let lease = Duration::from_secs(60);
    // Eight claimers race until the queue is empty, each with small batches so that
    // their claims overlap many times.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let got = q.claim(37, 16, vec![], lease).await.unwrap();
                if got.is_empty() {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                } else {
                    empty = 0;
                }
                mine.extend(got.into_iter().map(|d| (d.id, d.lease_id)));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    let mut ids: Vec<Uuid> = all.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no delivery leased twice");
    assert_eq!(n, 2000, "every delivery leased once");
    // The database agrees: every row carries exactly the lease its claimer was given.
    let leased: std::collections::HashMap<Uuid, Uuid> = all.into_iter().collect();
    let mut c = conn(&db.url).await;
    #[derive(QueryableByName)]
    struct Lease {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        lease_id: Uuid,
    }
    let rows: Vec<Lease> = diesel::sql_query("SELECT id, lease_id FROM webhook_deliveries")
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2000);
    assert!(rows.iter().all(|r| leased.get(&r.id) == Some(&r.lease_id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_writes_the_lease_without_touching_the_indexes() {
    let db = TestDb::new().await;
    let w = WebhookRow::new().active(true).insert(&db.url).await;
    enqueue(&db.url, w, 250).await;
    // The claim and the statistics of its own transaction, on one connection.
    let mut c = conn(&db.url).await;
    let (claimed, heap_only) = c
        .transaction::<_, diesel::result::Error, _>(async |c| {
            let claimed = count_on(
                c,
                "SELECT count(*) AS n FROM stratum_claim_per_webhook(
                     250, 250, '{}', '{}', gen_random_uuid(), interval '1 minute')",
            )
            .await;
            let heap_only = count_on(
                c,
                "SELECT coalesce(sum(pg_stat_get_xact_tuples_hot_updated(inhrelid)), 0)::bigint AS n
                   FROM pg_inherits WHERE inhparent = 'webhook_deliveries'::regclass",
            )
            .await;
            Ok((claimed, heap_only))
        })
        .await
        .unwrap();
    assert_eq!(claimed, 250);
    // Writing an indexed column (as next_retry_at was) makes none heap-only; at the
    // partitions' fillfactor most rows find room on their page.
    assert!(
        heap_only >= 125,
        "{heap_only} of {claimed} claims were heap-only updates"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leased_delivery_is_in_flight_not_due_until_its_lease_runs_out() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = WebhookRow::new().active(true).insert(&db.url).await;
    enqueue(&db.url, w, 5).await;
    let before = stratum_postgres::queue_snapshot(&pool(&db)).await.unwrap();
    assert_eq!((before.pending, before.due), (5, 5));

    let leased = q
        .claim(3, 3, vec![], Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let during = stratum_postgres::queue_snapshot(&pool(&db)).await.unwrap();
    assert_eq!(
        (during.pending, during.due),
        (5, 2),
        "the leased three are not due"
    );
    // Another claimer gets only the two left, whatever the room.
    let other = q
        .claim(10, 10, vec![], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(other.len(), 2);
    assert!(other.iter().all(|d| leased.iter().all(|l| l.id != d.id)));
    // Their due time is kept: once the short lease has run out, the three come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = stratum_postgres::queue_snapshot(&pool(&db)).await.unwrap();
    assert_eq!((after.pending, after.due), (5, 3));
    let again = q
        .claim(10, 10, vec![], Duration::from_secs(60))
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = again.iter().map(|d| d.id).collect();
    let mut want: Vec<Uuid> = leased.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    want.sort_unstable();
    assert_eq!(ids, want);
}
