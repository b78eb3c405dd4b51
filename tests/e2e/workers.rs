//! Several workers, crashes and exactly-once claims, end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use stratum_e2e::{count, default_env, enqueue, eventually, Behaviour, Receiver, Stratum, TestDb};

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
    // Each worker logs every delivery it made, so the test can see that both claimed some.
    w_env.retain(|(k, _)| k != "RUST_LOG");
    w_env.push((
        "RUST_LOG".into(),
        "warn,stratum_webhooks::dispatcher=debug".into(),
    ));
    let logs = tempfile_dir();
    let log_paths = [logs.join("w1.log"), logs.join("w2.log")];
    let mut w1 = Stratum::start_logged(&["worker"], &w_env, &log_paths[0])
        .await
        .unwrap();
    let mut w2 = Stratum::start_logged(&["worker"], &w_env, &log_paths[1])
        .await
        .unwrap();
    // In waves, each with its NOTIFY, as writes arrive: a single burst woken once lets the
    // worker that claims first drain all of it before the other's next poll (claims lock
    // the oldest rows, which the other skips), and then this test would see one worker idle.
    for _ in 0..20 {
        enqueue(&db, &id, 100).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    // Both workers claimed and delivered a share, and together each delivery once.
    assert!(w1.terminate() && w2.terminate());
    let mut by_worker = Vec::new();
    let mut all = HashMap::new();
    for path in &log_paths {
        let ids = delivered_in_log(path);
        by_worker.push(ids.len());
        for id in ids {
            *all.entry(id).or_insert(0) += 1;
        }
    }
    assert!(
        by_worker.iter().all(|n| *n > 0),
        "one worker claimed nothing: {by_worker:?}"
    );
    assert_eq!(all.len(), 2000, "{by_worker:?}");
    assert!(all.values().all(|n| *n == 1), "a delivery logged twice");
    let _ = std::fs::remove_dir_all(&logs);
}

/// A fresh folder for this test's files.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stratum-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The delivery ids a worker's JSON log says it delivered.
fn delivered_in_log(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.to_string().contains("webhook delivered"))
        .filter_map(|v| {
            let f = v.get("fields").unwrap_or(&v);
            f.get("delivery_id")
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        })
        .collect()
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
    // No other worker runs yet: the rows still leased are exactly those the killed worker
    // held at the moment of the kill. There must be some, or the test proves nothing.
    let leased_at_kill: Vec<String> = stratum_e2e::texts(
        &db.url,
        "SELECT id::text AS t FROM webhook_deliveries
          WHERE lease_id IS NOT NULL AND status = 'pending'",
    )
    .await
    .unwrap();
    assert!(
        !leased_at_kill.is_empty(),
        "no delivery was leased when the worker was killed"
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
    for id in &leased_at_kill {
        assert!(
            seen.contains_key(id),
            "delivery {id}, leased by the killed worker, never arrived"
        );
    }
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL"
        )
        .await
        .unwrap(),
        0,
        "leases left behind"
    );
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
    // Deliveries must be in flight (leased) when SIGTERM arrives, or the test proves nothing.
    let in_flight = eventually(Duration::from_secs(30), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL",
        )
        .await
        .unwrap()
            > 0
    })
    .await;
    assert!(in_flight, "no delivery was ever leased");
    assert!(app.terminate(), "stratum did not exit cleanly on SIGTERM");
    // The stopped process finished and recorded what it had claimed: nothing is left
    // leased, and everything the receiver got is recorded as delivered.
    let leased = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL",
    )
    .await
    .unwrap();
    assert_eq!(leased, 0, "deliveries left leased after SIGTERM");
    let received = rx.received().len() as i64;
    assert!(received > 0, "nothing was in flight at SIGTERM");
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
    // A new process delivers the rest; nothing goes out twice.
    let _app = Stratum::start(&["serve"], &env).await.unwrap();
    let all = eventually(Duration::from_secs(60), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
        )
        .await
        .unwrap()
            == 20
    })
    .await;
    assert!(all, "deliveries lost after SIGTERM");
    let seen = per_delivery(&rx, "slow");
    assert_eq!(seen.len(), 20);
    assert!(
        seen.values().all(|n| *n == 1),
        "a delivery went out twice: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_answers_health_ready_and_metrics_on_its_own_port() {
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
            Some(json!({"url": format!("{}/ops", rx.base), "events": ["tenant.updated"]})),
        )
        .await
        .unwrap();
    let id = hook["id"].as_str().unwrap().to_owned();
    // `start` waits for the worker's /health on the port it gave it (STRATUM_WORKER_BIND).
    let w = Stratum::start(&["worker"], &env).await.unwrap();
    assert_ne!(w.base, api.base);
    let client = stratum_e2e::client();
    let get = |path: &str| {
        let req = client.get(format!("{}{path}", w.base));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let ctype = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, ctype, res.text().await.unwrap())
        }
    };
    let (status, _, body) = get("/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = get("/ready").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, _, body) = get("/api/v1/tenants").await;
    assert_eq!(status, 404, "the worker serves no API: {body}");
    assert!(body.contains("NOT_FOUND"), "{body}");

    // One delivery through this worker shows up in its counters.
    enqueue(&db, &id, 1).await;
    assert!(
        rx.wait_for(Duration::from_secs(30), |r| r.len() == 1).await,
        "the worker never delivered"
    );
    let counted = eventually(Duration::from_secs(10), || async {
        get("/metrics")
            .await
            .2
            .contains("stratum_delivery_attempts_total{outcome=\"success\"} 1\n")
    })
    .await;
    let (status, ctype, text) = get("/metrics").await;
    assert!(counted, "{text}");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for series in [
        "stratum_deliveries_finished_total{outcome=\"success\"} 1\n",
        "stratum_deliveries_in_flight ",
        "stratum_delivery_latency_seconds_count 1\n",
        "stratum_deliveries_pending ",
        "stratum_deliveries_oldest_due_age_seconds ",
        "stratum_db_pool_max_size 16\n",
        "stratum_dispatcher_last_claim_size ",
        "stratum_dispatcher_last_completion_batch_size ",
    ] {
        assert!(text.contains(series), "no {series:?} in {text}");
    }
    // The webhook it delivered to has an adaptive limit, at least the initial 8.
    let limit = format!("stratum_webhook_concurrency_limit{{webhook_id=\"{id}\"}} ");
    let value: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(limit.as_str()))
        .unwrap_or_else(|| panic!("no {limit:?} in {text}"))
        .parse()
        .unwrap();
    assert!(value >= 8, "{value}");
}
