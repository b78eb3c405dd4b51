//! The trace context of the request that made an event, against a real PostgreSQL: the
//! journal keeps it with the event, and a queue reads it back with the claim only when asked
//! to (while traces are exported).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use stratum_core::{trace_context, Caller, EventType};
use stratum_postgres::{connect, PgDeliveryQueue};
use stratum_testkit::sql::{count, exec};
use stratum_testkit::TestDb;
use stratum_webhooks::{AttemptOutcome, ClaimedDelivery, Completion, DeliveryQueue, Verdict};
use time::OffsetDateTime;
use uuid::Uuid;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const LEASE: Duration = Duration::from_secs(60);

/// Records one `tenant.updated` event marked `n` in its own transaction.
async fn record(conn: &mut AsyncPgConnection, n: u32) {
    let journal = Caller::system()
        .journal("tenant.updated", "tenant")
        .emit(EventType::from_static("tenant.updated"), json!({"n": n}));
    stratum_postgres::record(conn, &journal).await.unwrap();
}

fn marks(batch: &[ClaimedDelivery]) -> Vec<(u64, Option<String>)> {
    let mut v: Vec<_> = batch
        .iter()
        .map(|d| (d.payload["n"].as_u64().unwrap(), d.trace_context.clone()))
        .collect();
    v.sort();
    v
}

async fn retry_all(q: &PgDeliveryQueue, batch: &[ClaimedDelivery]) {
    let done: Vec<Completion> = batch
        .iter()
        .map(|d| Completion {
            delivery_id: d.id,
            event_id: d.event_id,
            lease_id: d.lease_id,
            webhook_id: d.webhook_id,
            attempt: d.attempts + 1,
            outcome: AttemptOutcome {
                status: Some(503),
                duration_ms: 3,
                ..Default::default()
            },
            verdict: Verdict::Retry {
                at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
            },
        })
        .collect();
    assert_eq!(q.complete(done).await.unwrap(), batch.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_keeps_its_requests_trace_context_and_a_traced_queue_reads_it() {
    let db = TestDb::new().await;
    let id = Uuid::now_v7();
    exec(
        &db.url,
        &format!(
            "INSERT INTO webhooks (id, url, events, secret_encrypted)
             VALUES ('{id}', 'https://example.com/{id}', '{{tenant.updated}}', 'v1:x:y')"
        ),
    )
    .await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    trace_context::scope(Some(TRACEPARENT.to_owned()), record(&mut conn, 1)).await;
    record(&mut conn, 2).await;
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(*) AS n FROM webhook_events WHERE trace_context = '{TRACEPARENT}'"
            )
        )
        .await,
        1,
        "only the traced request's event keeps a context"
    );

    let pool = connect(&db.url, &Default::default()).unwrap();
    let plain = PgDeliveryQueue::new(pool.clone());
    let batch = plain.claim(16, 16, Vec::new(), LEASE).await.unwrap();
    assert_eq!(
        marks(&batch),
        vec![(1, None), (2, None)],
        "not read unless asked"
    );
    retry_all(&plain, &batch).await;

    let traced = PgDeliveryQueue::new(pool).with_trace_context(true);
    let batch = traced.claim(16, 16, Vec::new(), LEASE).await.unwrap();
    assert_eq!(
        marks(&batch),
        vec![(1, Some(TRACEPARENT.to_owned())), (2, None)]
    );
}
