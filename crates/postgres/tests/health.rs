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

/// An attempt at `at` (with the other columns of [`attempt`]).
async fn attempt_at(url: &str, delivery: Uuid, status: Option<i32>, ms: i32, at: OffsetDateTime) {
    let status = status.map_or("NULL".to_owned(), |s| s.to_string());
    exec(
        url,
        &format!(
            "INSERT INTO webhook_delivery_attempts
                 (id, delivery_id, event_id, attempt, status_code, duration_ms, created_at)
             SELECT '{}', '{delivery}', d.event_id, 1, {status}, {ms}, to_timestamp({})
               FROM webhook_deliveries d WHERE d.id = '{delivery}'",
            Uuid::now_v7(),
            at.unix_timestamp()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_series_counts_each_bucket_and_keeps_the_empty_ones() {
    let db = TestDb::new().await;
    let store = PgDeliveryStore::new(connect(&db.url, &Default::default()).unwrap());
    let (w, other) = (
        WebhookRow::new().insert(&db.url).await,
        WebhookRow::new().insert(&db.url).await,
    );
    let hour = time::Duration::hours(1);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Four one-hour buckets, the last one holding now.
    let from = OffsetDateTime::from_unix_timestamp(now - now.rem_euclid(3600)).unwrap() - hour * 3;

    // Nothing yet: every bucket, all zeros.
    let empty = store.health_series(w, from, 3600, 4).await.unwrap();
    assert_eq!(empty.len(), 4);
    for (i, b) in empty.iter().enumerate() {
        assert_eq!(b.start, from + hour * i32::try_from(i).unwrap());
        assert_eq!((b.attempts, b.successes), (0, 0));
        assert_eq!((b.p50_latency_ms, b.p99_latency_ms), (None, None));
    }

    let d = delivery(&db.url, w, "failed").await;
    let s = time::Duration::seconds;
    // Before the series, and at its end (exclusive): never counted.
    attempt_at(&db.url, d, Some(200), 1, from - s(1)).await;
    attempt_at(&db.url, d, Some(200), 1, from + hour * 4).await;
    // Bucket 0: 100 durations 1..=100 ms, the first 75 answered 200 and the rest 503.
    for ms in 1..=100 {
        let status = if ms <= 75 { Some(200) } else { Some(503) };
        attempt_at(&db.url, d, status, ms, from + s(i64::from(ms))).await;
    }
    // Bucket 1 stays empty. Bucket 2: a transport error and a 3xx, on its first and last second.
    attempt_at(&db.url, d, None, 40, from + hour * 2).await;
    attempt_at(&db.url, d, Some(302), 60, from + hour * 3 - s(1)).await;
    // Bucket 3: one success.
    attempt_at(&db.url, d, Some(204), 8, from + hour * 3).await;
    // Another webhook's attempt in bucket 3 never counts.
    let foreign = delivery(&db.url, other, "failed").await;
    attempt_at(&db.url, foreign, Some(500), 999, from + hour * 3 + s(5)).await;

    let b = store.health_series(w, from, 3600, 4).await.unwrap();
    assert_eq!(b.len(), 4);
    let counts: Vec<(i64, i64)> = b.iter().map(|b| (b.attempts, b.successes)).collect();
    assert_eq!(counts, vec![(100, 75), (0, 0), (2, 0), (1, 1)]);
    // percentile_cont: linear interpolation between the ordered durations 1..=100.
    assert_eq!(b[0].p50_latency_ms, Some(50.5));
    assert!(
        (b[0].p99_latency_ms.unwrap() - 99.01).abs() < 1e-9,
        "{:?}",
        b[0].p99_latency_ms
    );
    assert_eq!((b[1].p50_latency_ms, b[1].p99_latency_ms), (None, None));
    assert_eq!(b[2].p50_latency_ms, Some(50.0));
    assert_eq!(
        (b[3].p50_latency_ms, b[3].p99_latency_ms),
        (Some(8.0), Some(8.0))
    );
    assert_eq!(b[3].start, from + hour * 3);

    // Minute buckets over the first five minutes: bucket 0's attempts, made at seconds 1-100,
    // split at the minute (seconds 1-59, then 60-100).
    let m = store.health_series(w, from, 60, 5).await.unwrap();
    let counts: Vec<i64> = m.iter().map(|b| b.attempts).collect();
    assert_eq!(counts, vec![59, 41, 0, 0, 0]);

    let o = store.health_series(other, from, 3600, 4).await.unwrap();
    let counts: Vec<i64> = o.iter().map(|b| b.attempts).collect();
    assert_eq!(counts, vec![0, 0, 0, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_detail_joins_its_webhook_and_event_and_only_under_its_webhook() {
    let db = TestDb::new().await;
    let store = PgDeliveryStore::new(connect(&db.url, &Default::default()).unwrap());
    let (w, other) = (
        WebhookRow::new().insert(&db.url).await,
        WebhookRow::new().insert(&db.url).await,
    );
    let d = delivery(&db.url, w, "pending").await;
    let got = store.detail(w, d).await.unwrap().unwrap();
    assert_eq!(got.delivery.id, d);
    assert_eq!(got.webhook.id, w);
    assert_eq!(got.event.id, got.delivery.event_id);
    assert_eq!(got.event.event_type, "tenant.updated");
    assert_eq!(got.event.data, serde_json::json!({}));
    assert_eq!(store.detail(other, d).await.unwrap(), None);
    assert_eq!(store.detail(w, Uuid::now_v7()).await.unwrap(), None);
}
