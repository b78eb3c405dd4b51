//! Hostile clients against the real binary: slow bodies, and a webhook row that a
//! permissive process stored but a production process must not send to.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::Duration;

use serde_json::{json, Value};
use stratum_e2e::{default_env, eventually, Receiver, Stratum, TestDb, ADMIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Sends a head announcing 1000 bytes and then only 10, and reads whatever comes back
/// until the server closes the connection. The outer timeout only keeps a broken server
/// from hanging the test; it asserts nothing about speed.
async fn slow_body(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nX-API-Key: {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\": \""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server never answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_arrives_gets_408_and_the_connection_is_closed() {
    let db = TestDb::new().await;
    let env = with(
        &default_env(&db),
        &[("STRATUM_REQUEST_BODY_TIMEOUT_MS", "300")],
    );
    let app = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let held = 50;
    let tasks: Vec<_> = (0..held)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { slow_body(&addr).await })
        })
        .collect();
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert_eq!(v["error"]["code"], "REQUEST_TIMEOUT", "{answer}");
    }
    // Nothing was created, and the server still serves.
    let (st, page) = app.api("GET", "/tenants", None).await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(page["data"], json!([]));
    eprintln!("hostile cases: {held}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_target_stored_by_a_permissive_process_is_dead_lettered_in_production() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    // A development process (private targets allowed) registers an http:// webhook.
    let dev = Stratum::start(&["serve", "--no-worker"], &default_env(&db))
        .await
        .unwrap();
    let (st, hook) = dev
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/plain", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{hook}");
    drop(dev);
    // A production process (the default) must refuse it at delivery time, once.
    let env = with(
        &default_env(&db),
        &[
            ("STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS", "false"),
            ("STRATUM_WEBHOOK_MAX_ATTEMPTS", "8"),
        ],
    );
    let prod = Stratum::start(&["serve"], &env).await.unwrap();
    let (st, _) = prod
        .api("POST", "/tenants", Some(json!({"name": "A", "slug": "a"})))
        .await
        .unwrap();
    assert_eq!(st, 201);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let path = format!("/webhooks/{hook_id}/deliveries");
    let failed = eventually(Duration::from_secs(60), || async {
        let (_, d) = prod.api("GET", &path, None).await.unwrap();
        d[0]["status"] == "failed"
    })
    .await;
    assert!(failed, "the delivery is dead-lettered");
    let (_, d) = prod.api("GET", &path, None).await.unwrap();
    assert_eq!(d[0]["attempts"], 1, "refused once, not retried: {d}");
    let error = d[0]["last_error"].as_str().unwrap_or("");
    // Loopback fails the address check first; a public http:// name fails the scheme
    // check (covered by the client's own tests). Either way: refused, said so, once.
    assert!(
        error.starts_with("blocked target") || error.starts_with("refused target"),
        "{error}"
    );
    assert!(rx.received().is_empty(), "nothing was sent");
    eprintln!("hostile cases: 1");
}
