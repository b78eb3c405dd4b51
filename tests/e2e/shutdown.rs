//! SIGTERM to `serve` and `worker` in the middle of writes and deliveries: both stop
//! cleanly, every acknowledged write is there with its audit entry, its event and its
//! delivery, and after a restart every delivery arrives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use stratum_e2e::{
    client, count, default_env, eventually, texts, Behaviour, Receiver, Stratum, TestDb, ADMIN,
};

/// Creates tenants through `base` until `stop`; returns the ids of those answered 201.
async fn write_until(base: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let client = client();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let sent = client
            .post(format!("{base}/api/v1/tenants"))
            .header("X-API-Key", ADMIN)
            .json(&json!({"name": format!("Load {i}"), "slug": format!("load_{i}")}))
            .send()
            .await;
        match sent {
            Ok(res) if res.status().as_u16() == 201 => {
                let body: Value = res.json().await.unwrap_or(Value::Null);
                let id = body["id"].as_str().expect("a created tenant has an id");
                acked.lock().unwrap().push(id.to_owned());
            }
            // Refused or cut off while stopping: not acknowledged, so not counted.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// `ids` as a SQL text array literal.
fn array(ids: &[String]) -> String {
    format!("ARRAY['{}']::text[]", ids.join("','"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_serve_and_worker_mid_load_loses_nothing() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    // Slower than the writes come, so a backlog builds up behind the deliveries in flight.
    rx.set("slow", Behaviour::Slow(Duration::from_secs(1)));
    let mut env = default_env(&db);
    // Few deliveries claimed at once, so most of the backlog waits unclaimed at the signal.
    env.push(("STRATUM_WORKER_CONCURRENCY".into(), "8".into()));
    let mut api = Stratum::start(&["serve"], &env).await.unwrap();
    let mut worker = Stratum::start(&["worker"], &env).await.unwrap();
    let (status, hook) = api
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/slow", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{hook}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(write_until(api.base.clone(), stop.clone(), acked.clone())))
        .collect();

    // The precondition: writes acknowledged, deliveries leased (in flight to the slow
    // receiver) and more waiting behind them when the signal goes out.
    let (leased, waiting) = (AtomicI64::new(0), AtomicI64::new(0));
    let loaded = eventually(Duration::from_secs(60), || async {
        let l = count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL",
        )
        .await
        .unwrap();
        let w = count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries
              WHERE status = 'pending' AND lease_id IS NULL",
        )
        .await
        .unwrap();
        leased.store(l, Ordering::SeqCst);
        waiting.store(w, Ordering::SeqCst);
        l > 0 && w >= 100 && acked.lock().unwrap().len() >= 100
    })
    .await;
    assert!(
        loaded,
        "no load to stop: {} leased, {} waiting, {} acknowledged",
        leased.load(Ordering::SeqCst),
        waiting.load(Ordering::SeqCst),
        acked.lock().unwrap().len()
    );
    api.signal_term();
    worker.signal_term();
    assert!(
        api.exited_cleanly(Duration::from_secs(60)),
        "serve did not stop cleanly"
    );
    assert!(
        worker.exited_cleanly(Duration::from_secs(60)),
        "worker did not stop cleanly"
    );
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let ids = array(&acked);

    // Both processes finished what they held: nothing is left leased, and deliveries
    // remain pending for a restart.
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE lease_id IS NOT NULL"
        )
        .await
        .unwrap(),
        0,
        "deliveries left leased after SIGTERM"
    );
    let pending = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
    )
    .await
    .unwrap();
    assert!(
        pending > 0,
        "every delivery went out before the stop: nothing was pending"
    );

    // Every acknowledged write is there, with its audit entry, its event and its delivery.
    let n = acked.len() as i64;
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT count(*) AS n FROM tenants WHERE id::text = ANY({ids})")
        )
        .await
        .unwrap(),
        n,
        "acknowledged tenants missing"
    );
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(DISTINCT resource_id) AS n FROM audit_logs
                  WHERE action = 'tenant.created' AND resource_id = ANY({ids})"
            )
        )
        .await
        .unwrap(),
        n,
        "acknowledged writes without their audit entry"
    );
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(DISTINCT e.tenant_id) AS n
                   FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
                  WHERE e.event_type = 'tenant.created' AND e.tenant_id::text = ANY({ids})"
            )
        )
        .await
        .unwrap(),
        n,
        "acknowledged writes without their event and delivery"
    );

    // After a restart (the receiver now quick), every delivery arrives: none
    // dead-lettered, none left pending.
    rx.set("slow", Behaviour::Ok);
    let _api = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let total = count(&db.url, "SELECT count(*) AS n FROM webhook_deliveries")
        .await
        .unwrap();
    assert!(total >= n);
    let delivered = eventually(Duration::from_secs(120), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
        )
        .await
        .unwrap()
            == total
    })
    .await;
    assert!(delivered, "deliveries lost across the stop");
    let sent: HashSet<String> = texts(&db.url, "SELECT id::text AS t FROM webhook_deliveries")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let arrived: HashSet<String> = rx
        .received_on("slow")
        .into_iter()
        .map(|r| r.headers["x-stratum-delivery"].clone())
        .collect();
    assert_eq!(sent.len() as i64, total);
    assert!(
        sent.is_subset(&arrived),
        "{} deliveries never arrived",
        sent.difference(&arrived).count()
    );
}
