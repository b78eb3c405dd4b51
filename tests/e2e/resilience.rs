//! PostgreSQL going away and coming back under load: 503s, no crash, nothing lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use stratum_e2e::{env_for_url, eventually, free_port, Receiver, Stratum};

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
            ("STRATUM_PG_FAST".to_owned(), "1".to_owned()),
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

#[tokio::test(flavor = "multi_thread")]
async fn serving_survives_a_database_outage() {
    let pg = PrivatePg::new();
    let rx = Receiver::start();
    let mut env = env_for_url(&pg.url());
    env.push(("STRATUM_WEBHOOK_MAX_ATTEMPTS".into(), "20".into()));
    let app = Stratum::start(&["serve"], &env).await.unwrap();
    let (st, _) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/r", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);

    let mut created = 0;
    for i in 0..20 {
        let (st, _) = app
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": "t", "slug": format!("before{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(st, 201);
        created += 1;
    }

    assert!(pg.run(&["down"]), "could not stop PostgreSQL");
    let mut unavailable = 0;
    for i in 0..10 {
        let (st, body) = app
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": "t", "slug": format!("during{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(st, 503, "{body}");
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
        unavailable += 1;
    }
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
    assert_eq!(unavailable, 10);

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
    for i in 0..20 {
        let (st, _) = app
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": "t", "slug": format!("after{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(st, 201);
        created += 1;
    }
    // Every committed event is delivered; none of the refused ones is.
    assert!(
        rx.wait_for(Duration::from_secs(60), |r| r.len() >= created)
            .await,
        "deliveries were lost: {} of {created}",
        rx.received().len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.headers["x-stratum-delivery"].clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), created);
}
