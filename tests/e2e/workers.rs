//! Several workers, crashes and exactly-once claims, end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use stratum_e2e::{count, default_env, eventually, sql, Behaviour, Receiver, Stratum, TestDb};

/// Creates `n` pending deliveries of one event each to `webhook_id`, in one statement.
async fn enqueue(db: &TestDb, webhook_id: &str, n: usize) {
    sql(
        &db.url,
        &format!(
            "WITH ev AS (
                 INSERT INTO webhook_events (id, event_type, tenant_id, payload)
                 SELECT stratum_uuid_v7(), 'tenant.updated', NULL, jsonb_build_object('n', g)
                   FROM generate_series(1, {n}) g
                 RETURNING id
             )
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
             SELECT stratum_uuid_v7(), '{webhook_id}', ev.id, 'tenant.updated' FROM ev"
        ),
    )
    .await
    .unwrap();
    sql(&db.url, "NOTIFY stratum_deliveries").await.unwrap();
}

fn per_delivery(rx: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in rx.received_on(path) {
        *m.entry(r.headers["x-stratum-delivery"].clone())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_deliver_each_exactly_once() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let env = default_env(&db);
    let api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let (_, hook) = api
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/two", rx.base), "events": ["tenant.updated"]})),
        )
        .await
        .unwrap();
    let id = hook["id"].as_str().unwrap().to_owned();
    let mut w_env = env.clone();
    w_env.push(("STRATUM_WORKER_CONCURRENCY".into(), "32".into()));
    w_env.push((
        "STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT".into(),
        "16".into(),
    ));
    let _w1 = Stratum::start(&["worker"], &w_env).await.unwrap();
    let _w2 = Stratum::start(&["worker"], &w_env).await.unwrap();
    enqueue(&db, &id, 2000).await;
    let done = eventually(Duration::from_secs(120), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
        )
        .await
        .unwrap()
            == 2000
    })
    .await;
    assert!(done, "not every delivery succeeded");
    let seen = per_delivery(&rx, "two");
    assert_eq!(seen.len(), 2000);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let attempts = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_delivery_attempts",
    )
    .await
    .unwrap();
    assert_eq!(attempts, 2000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_loses_nothing() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("slow", Behaviour::Slow(Duration::from_millis(20)));
    let mut env = default_env(&db);
    // Short leases so the crashed worker's claims come back within the test.
    env.retain(|(k, _)| k != "STRATUM_WEBHOOK_TIMEOUT_MS");
    env.push(("STRATUM_WEBHOOK_TIMEOUT_MS".into(), "500".into()));
    env.push((
        "STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT".into(),
        "16".into(),
    ));
    let api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let (_, hook) = api
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/slow", rx.base), "events": ["tenant.updated"]})),
        )
        .await
        .unwrap();
    let id = hook["id"].as_str().unwrap().to_owned();
    let mut w = Stratum::start(&["worker"], &env).await.unwrap();
    enqueue(&db, &id, 2000).await;
    assert!(
        rx.wait_for(Duration::from_secs(60), |r| r.len() >= 300)
            .await,
        "the worker never got going"
    );
    w.kill9();
    let at_kill = rx.received().len();
    assert!(
        at_kill < 2000,
        "killed too late to prove anything ({at_kill})"
    );
    let _w2 = Stratum::start(&["worker"], &env).await.unwrap();
    let done = eventually(Duration::from_secs(120), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
        )
        .await
        .unwrap()
            == 2000
    })
    .await;
    assert!(done, "deliveries were lost after kill -9");
    let seen = per_delivery(&rx, "slow");
    assert_eq!(seen.len(), 2000, "every delivery arrived at least once");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_gracefully() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("slow", Behaviour::Slow(Duration::from_millis(200)));
    let env = default_env(&db);
    let mut app = Stratum::start(&["serve"], &env).await.unwrap();
    let (_, hook) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/slow", rx.base), "events": ["tenant.updated"]})),
        )
        .await
        .unwrap();
    enqueue(&db, hook["id"].as_str().unwrap(), 20).await;
    assert!(
        rx.wait_for(Duration::from_secs(30), |r| !r.is_empty())
            .await
    );
    assert!(app.terminate(), "stratum did not exit cleanly on SIGTERM");
    // What was sent was recorded: no delivery is left leased by the stopped process.
    let leased = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL",
    )
    .await
    .unwrap();
    let received = rx.received().len() as i64;
    let done = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
    )
    .await
    .unwrap();
    assert_eq!(
        done, received,
        "every delivery the receiver got is recorded as delivered"
    );
    assert!(leased <= 20 - received, "leases left: {leased}");
}
