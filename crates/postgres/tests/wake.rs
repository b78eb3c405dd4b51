//! Waking the workers against a real PostgreSQL: a write that made deliveries due is
//! followed by a notification once it has committed, a write rolled back after its fan-out
//! by none, and a journal written outside `in_tx!`, or by the previous release's call,
//! still notifies with its commit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde_json::json;
use stratum_core::{Caller, EventType};
use stratum_postgres::tx::TxError;
use stratum_postgres::{connect, PgTenantStore, DELIVERY_CHANNEL};
use stratum_tenancy::{TenancyError, TenantChange, TenantStore};
use stratum_testkit::fixtures::{tenant, WebhookRow};
use stratum_testkit::sql::count;
use stratum_testkit::TestDb;
use tokio::sync::mpsc;
use uuid::Uuid;

const UPDATED: EventType = EventType::from_static("tenant.updated");

/// A tenant with a webhook subscribed to its updates: each write to it fans out.
async fn tenant_with_webhook(url: &str, slug: &str) -> Uuid {
    let id = tenant(url, slug).await;
    WebhookRow::new().tenant(Some(id)).insert(url).await;
    id
}

/// A rename that emits `tenant.updated`.
fn rename(id: Uuid, name: &str, slug: Option<&str>) -> TenantChange {
    common::rename_then(id, name, slug, |journal, after| {
        journal.emit(UPDATED, json!({"id": after.id, "name": after.name}))
    })
}

async fn pending_deliveries(url: &str) -> i64 {
    count(
        url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
    )
    .await
}

/// A connection listening on the delivery channel; each notification is sent on the
/// returned channel.
async fn listener(url: &str) -> mpsc::UnboundedReceiver<()> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(format!("LISTEN {DELIVERY_CHANNEL}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(conn.notifications_stream());
        while let Some(Ok(_)) = stream.next().await {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn woken(rx: &mut mpsc::UnboundedReceiver<()>, within: Duration) -> bool {
    tokio::time::timeout(within, rx.recv()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fans_out_wakes_the_workers_after_its_commit_and_one_rolled_back_does_not() {
    let db = TestDb::new().await;
    let id = tenant_with_webhook(&db.url, "mine").await;
    let other = tenant_with_webhook(&db.url, "taken").await;
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());
    let mut rx = listener(&db.url).await;

    // Rolled back after its fan-out: the journal made a delivery due in the transaction,
    // then the block failed.
    let journal = |name: &str| {
        Caller::system()
            .journal("tenant.updated", "tenant")
            .resource(id)
            .tenant(Some(id))
            .emit(UPDATED, json!({"id": id, "name": name}))
    };
    let pool = connect(&db.url, &Default::default()).unwrap();
    let failed = journal("x");
    let r: Result<(), TenancyError> = stratum_postgres::in_tx!(pool, TenancyError, |conn| {
        let fanned = stratum_postgres::record(conn, &failed).await?;
        assert_eq!(fanned, 1, "the delivery was due inside the transaction");
        Err(TxError::Domain(TenancyError::TenantNotFound))
    });
    assert!(matches!(r, Err(TenancyError::TenantNotFound)), "{r:?}");
    assert!(!woken(&mut rx, Duration::from_millis(500)).await);
    assert_eq!(pending_deliveries(&db.url).await, 0);

    // Committed: woken, with the delivery there.
    let committed = journal("y");
    let r: Result<(), TenancyError> = stratum_postgres::in_tx!(pool, TenancyError, |conn| {
        stratum_postgres::record(conn, &committed).await?;
        Ok(())
    });
    r.unwrap();
    assert!(woken(&mut rx, Duration::from_secs(5)).await);
    assert_eq!(pending_deliveries(&db.url).await, 1);

    // A burst over two tenants: however the wake-ups coalesce, the burst is followed by
    // one once every write has committed (the listener is drained first).
    let writes = (0..24).map(|i| {
        let store = store.clone();
        let t = if i % 2 == 0 { id } else { other };
        async move { store.modify(t, rename(t, &format!("n{i}"), None)).await }
    });
    for r in futures_util::future::join_all(writes).await {
        r.unwrap();
    }
    assert_eq!(pending_deliveries(&db.url).await, 25);
    let mut n = 0;
    while woken(&mut rx, Duration::from_millis(300)).await {
        n += 1;
    }
    assert!((1..=24).contains(&n), "{n} notifications for 24 writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_written_outside_in_tx_notifies_with_its_commit() {
    let db = TestDb::new().await;
    let id = tenant_with_webhook(&db.url, "mine").await;
    let mut rx = listener(&db.url).await;
    let journal = Caller::system()
        .journal("tenant.updated", "tenant")
        .resource(id)
        .tenant(Some(id))
        .after(Some(json!({"name": "z"})))
        .emit(UPDATED, json!({"id": id, "name": "z"}));
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        let fanned = stratum_postgres::record(c, &journal).await?;
        assert_eq!(fanned, 1);
        Ok(())
    })
    .await
    .unwrap();
    assert!(woken(&mut rx, Duration::from_secs(5)).await);

    // Rolled back after its fan-out: none.
    let journal = Caller::system()
        .journal("tenant.updated", "tenant")
        .resource(id)
        .tenant(Some(id))
        .emit(UPDATED, json!({"id": id}));
    let r = conn
        .transaction::<(), diesel::result::Error, _>(async |c| {
            let fanned = stratum_postgres::record(c, &journal).await?;
            assert_eq!(fanned, 1, "the delivery was due inside the transaction");
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(r.is_err());
    assert!(!woken(&mut rx, Duration::from_millis(500)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_releases_journal_call_still_notifies_with_its_commit() {
    let db = TestDb::new().await;
    let id = tenant_with_webhook(&db.url, "mine").await;
    let mut rx = listener(&db.url).await;
    // A process of the previous release calls the 15-argument stratum_record in its
    // transaction and sends no NOTIFY of its own.
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
    diesel::sql_query(format!(
        "SELECT stratum_record(gen_random_uuid(), '{id}', 'system', 'system', 'tenant.updated',
                'tenant', '{id}', NULL, '{{}}'::jsonb, '{{}}'::jsonb, stratum_uuid_v7(),
                'tenant.updated', '{id}', '{{}}'::jsonb, '{{}}'::uuid[])"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(
        !woken(&mut rx, Duration::from_millis(300)).await,
        "not before the commit"
    );
    diesel::sql_query("COMMIT")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(woken(&mut rx, Duration::from_secs(5)).await);
    assert_eq!(pending_deliveries(&db.url).await, 1);
}
