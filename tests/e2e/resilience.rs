//! PostgreSQL going away and coming back under load: 503s, no crash, nothing lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stratum_e2e::{
    count, env_for_url, eventually, free_port, sql, Behaviour, Receiver, Stratum, ADMIN,
};

/// A PostgreSQL cluster of this test's own, so stopping it disturbs no other test.
struct PrivatePg {
    env: Vec<(String, String)>,
    port: u16,
}

impl PrivatePg {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh")
    }

    fn run(&self, args: &[&str]) -> bool {
        Command::new(Self::script())
            .args(args)
            .envs(self.env.iter().cloned())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn new() -> Self {
        let port = free_port();
        let dir = format!("/tmp/stratum-pg-e2e-{}", uuid::Uuid::new_v4().simple());
        let env = vec![
            ("STRATUM_PG_PORT".to_owned(), port.to_string()),
            ("STRATUM_PGDATA".to_owned(), dir),
            ("STRATUM_PG_CLUSTER".to_owned(), "test".to_owned()),
        ];
        let pg = Self { env, port };
        assert!(
            pg.run(&["up", "stratum"]),
            "private PostgreSQL did not start"
        );
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/stratum", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.run(&["down"]);
        if let Some((_, dir)) = self.env.iter().find(|(k, _)| k == "STRATUM_PGDATA") {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates tenants on `base` from `workers` concurrent clients until `stop`; returns every
/// answer's status with its body.
async fn tenant_load(base: String, workers: usize, stop: Arc<AtomicBool>) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let base = base.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = stratum_e2e::client();
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let res = http
                        .post(format!("{base}/api/v1/tenants"))
                        .header("X-API-Key", ADMIN)
                        .json(&json!({"name": "t", "slug": format!("w{w}n{i}")}))
                        .send()
                        .await;
                    if let Ok(r) = res {
                        let status = r.status().as_u16();
                        out.push((status, r.text().await.unwrap_or_default()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn serving_survives_a_database_outage() {
    let pg = PrivatePg::new();
    let rx = Receiver::start();
    // A slow receiver keeps deliveries pending (and some in flight) when the database goes.
    rx.set("r", Behaviour::Slow(Duration::from_millis(50)));
    let mut env = env_for_url(&pg.url());
    env.push(("STRATUM_WEBHOOK_MAX_ATTEMPTS".into(), "20".into()));
    env.push((
        "STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT".into(),
        "2".into(),
    ));
    let app = Stratum::start(&["serve"], &env).await.unwrap();
    let (st, hook) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/r", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    // A backlog the slow receiver needs seconds to take: deliveries are pending (and some
    // in flight) when the database goes away, however fast the load below runs.
    const BACKLOG: i64 = 400;
    sql(
        &pg.url(),
        &format!(
            "WITH ev AS (
                 INSERT INTO webhook_events (id, event_type, tenant_id, payload)
                 SELECT stratum_uuid_v7(), 'tenant.created', NULL, jsonb_build_object('n', g)
                   FROM generate_series(1, {BACKLOG}) g
                 RETURNING id
             )
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
             SELECT stratum_uuid_v7(), '{}', ev.id, 'tenant.created' FROM ev",
            hook["id"].as_str().unwrap()
        ),
    )
    .await
    .unwrap();

    // Concurrent load before, during and after the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(tenant_load(app.base.clone(), 4, stop.clone()));
    let busy = eventually(Duration::from_secs(30), || async {
        count(&pg.url(), "SELECT count(*) AS n FROM tenants")
            .await
            .map(|n| n >= 20)
            .unwrap_or(false)
    })
    .await;
    assert!(busy, "the load never got going");
    let pending_at_outage = count(
        &pg.url(),
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
    )
    .await
    .unwrap();
    assert!(pending_at_outage > 0);

    assert!(pg.run(&["down"]), "could not stop PostgreSQL");
    let (st, body) = app
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "t", "slug": "during"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    let (st, _) = app.api("GET", "/tenants", None).await.unwrap();
    assert_eq!(st, 503);
    let health = stratum_e2e::client()
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "liveness does not depend on the database"
    );
    let ready = stratum_e2e::client()
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    assert!(pg.run(&["up", "stratum"]), "could not restart PostgreSQL");
    // The same process recovers by itself.
    let recovered = eventually(Duration::from_secs(30), || async {
        app.api("GET", "/tenants", None)
            .await
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(
        recovered,
        "the API did not recover after the database came back"
    );
    let (st, _) = app
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "t", "slug": "after"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    stop.store(true, Ordering::Relaxed);
    let answers = load.await.unwrap();

    // The load saw only successes and 503s (never another 5xx), and some of each.
    let created = answers.iter().filter(|(s, _)| *s == 201).count() as i64 + 1;
    let refused = answers.iter().filter(|(s, _)| *s == 503).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s != 201 && *s != 503)
        .collect();
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(refused > 0, "the load never met the outage");

    // Every committed tenant's event is delivered: 0 lost (a 503 whose commit made it
    // anyway would still be delivered), none dead-lettered.
    let tenants = count(&pg.url(), "SELECT count(*) AS n FROM tenants")
        .await
        .unwrap();
    assert!(
        tenants >= created,
        "{tenants} tenants, {created} answered 201"
    );
    let expected = tenants + BACKLOG;
    let settled = eventually(Duration::from_secs(180), || async {
        count(
            &pg.url(),
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'",
        )
        .await
        .map(|n| n == expected)
        .unwrap_or(false)
    })
    .await;
    assert!(
        settled,
        "deliveries were lost: {} of {expected} succeeded",
        count(
            &pg.url(),
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'"
        )
        .await
        .unwrap()
    );
    assert_eq!(
        count(&pg.url(), "SELECT count(*) AS n FROM webhook_deliveries")
            .await
            .unwrap(),
        expected
    );
    let mut ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.headers["x-stratum-delivery"].clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len() as i64,
        expected,
        "every delivery reached the receiver"
    );
}
