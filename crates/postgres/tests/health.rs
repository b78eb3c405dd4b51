//! Per-webhook health figures and delivery attempts against a real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use stratum_postgres::{connect, PgDeliveryStore};
use stratum_testkit::fixtures::WebhookRow;
use stratum_testkit::sql::exec;
use stratum_testkit::TestDb;
use stratum_webhooks::DeliveryStore;
use time::OffsetDateTime;
use uuid::Uuid;

/// A delivery of `webhook` in `status`; returns its id.
async fn delivery(url: &str, webhook: Uuid, status: &str) -> Uuid {
    let (e, d) = (Uuid::now_v7(), Uuid::now_v7());
    exec(
        url,
        &format!(
            "WITH ev AS (INSERT INTO webhook_events (id, event_type, payload)
                          VALUES ('{e}', 'tenant.updated', '{{}}') RETURNING id)
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status)
             SELECT '{d}', '{webhook}', ev.id, 'tenant.updated', '{status}' FROM ev"
        ),
    )
    .await;
    d
}

/// An attempt `ago` seconds back.
async fn attempt(
    url: &str,
    delivery: Uuid,
    n: i32,
    status: Option<i32>,
    ms: i32,
    error: Option<&str>,
    ago: i64,
) {
    let status = status.map_or("NULL".to_owned(), |s| s.to_string());
    let error = error.map_or("NULL".to_owned(), |e| format!("'{e}'"));
    exec(
        url,
        &format!(
            "INSERT INTO webhook_delivery_attempts
                 (id, delivery_id, event_id, attempt, status_code, duration_ms, error, response_body, created_at)
             SELECT '{}', '{delivery}', d.event_id, {n}, {status}, {ms}, {error}, 'body {n}',
                    now() - interval '{ago} seconds'
               FROM webhook_deliveries d WHERE d.id = '{delivery}'",
            Uuid::now_v7()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_counts_the_window_the_median_the_last_error_and_the_queue() {
    let db = TestDb::new().await;
    let store = PgDeliveryStore::new(connect(&db.url, &Default::default()).unwrap());
    let (w, other) = (
        WebhookRow::new().insert(&db.url).await,
        WebhookRow::new().insert(&db.url).await,
    );

    // Nothing yet: zeros, no median, no error.
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let f = store.health(w, since).await.unwrap();
    assert_eq!((f.attempts, f.successes, f.queue_depth), (0, 0, 0));
    assert_eq!(f.p50_latency_ms, None);
    assert_eq!(f.last_error, None);

    let failed = delivery(&db.url, w, "failed").await;
    let ok = delivery(&db.url, w, "success").await;
    delivery(&db.url, w, "pending").await;
    delivery(&db.url, w, "pending").await;
    // Two hours back: outside the window (and older than the latest failure).
    attempt(&db.url, failed, 1, Some(500), 1000, None, 7200).await;
    attempt(&db.url, failed, 2, None, 10, Some("connection refused"), 60).await;
    // An empty error text counts as none.
    attempt(&db.url, failed, 3, Some(503), 30, Some(""), 30).await;
    attempt(&db.url, ok, 1, Some(200), 20, None, 10).await;
    // Another webhook's attempts never count.
    let foreign = delivery(&db.url, other, "failed").await;
    attempt(&db.url, foreign, 1, None, 5, Some("elsewhere"), 1).await;

    let f = store.health(w, since).await.unwrap();
    assert_eq!(
        f.attempts, 3,
        "the 2-hour-old attempt is outside the window"
    );
    assert_eq!(f.successes, 1);
    assert_eq!(f.p50_latency_ms, Some(20.0), "median of 10, 20, 30");
    let (err, _at) = f.last_error.unwrap();
    assert_eq!(err, "receiver answered 503", "the latest failed attempt");
    assert_eq!(f.queue_depth, 2);

    let f = store.health(other, since).await.unwrap();
    assert_eq!((f.attempts, f.successes, f.queue_depth), (1, 0, 0));
    assert_eq!(f.last_error.unwrap().0, "elsewhere");
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_come_oldest_first_and_only_for_the_webhook_that_owns_the_delivery() {
    let db = TestDb::new().await;
    let store = PgDeliveryStore::new(connect(&db.url, &Default::default()).unwrap());
    let (w, other) = (
        WebhookRow::new().insert(&db.url).await,
        WebhookRow::new().insert(&db.url).await,
    );
    let d = delivery(&db.url, w, "failed").await;
    attempt(&db.url, d, 1, Some(500), 12, None, 30).await;
    attempt(&db.url, d, 2, None, 7, Some("timed out"), 20).await;

    let rows = store.attempts(w, d).await.unwrap().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].attempt, 1);
    assert_eq!(rows[0].status_code, Some(500));
    assert_eq!(rows[0].duration_ms, 12);
    assert_eq!(rows[0].response_body.as_deref(), Some("body 1"));
    assert_eq!(rows[1].error.as_deref(), Some("timed out"));
    assert!(rows[0].created_at < rows[1].created_at);

    assert_eq!(store.attempts(other, d).await.unwrap(), None);
    assert_eq!(store.attempts(w, Uuid::now_v7()).await.unwrap(), None);
    let fresh = delivery(&db.url, w, "pending").await;
    assert_eq!(store.attempts(w, fresh).await.unwrap(), Some(vec![]));
}
