//! Webhooks end to end: the real binary, real PostgreSQL, a local receiver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::Duration;

use serde_json::{json, Value};
use stratum_e2e::{count, default_env, eventually, Behaviour, Receiver, Stratum, TestDb};

const WAIT: Duration = Duration::from_secs(30);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_arrives_signed_both_ways() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let app = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();

    let all = [
        "tenant.created",
        "tenant.updated",
        "tenant.deleted",
        "tenant.moved",
        "config.updated",
        "config.deleted",
        "permission.created",
        "permission.updated",
        "permission.deleted",
    ];
    let (st, hook) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/all", rx.base), "events": all})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{hook}");
    let secret = s(&hook, "secret");
    assert!(
        secret.starts_with("whsec_"),
        "generated secret returned once: {hook}"
    );
    let (_, again) = app
        .api("GET", &format!("/webhooks/{}", s(&hook, "id")), None)
        .await
        .unwrap();
    assert!(again.get("secret").is_none());

    // A second webhook with a plain secret on one event only.
    let (st, plain) = app
        .api("POST", "/webhooks", Some(json!({"url": format!("{}/plain", rx.base), "events": ["tenant.created"], "secret": "a-plain-secret-of-some-length"})))
        .await
        .unwrap();
    assert_eq!(st, 201);
    assert!(
        plain.get("secret").is_none(),
        "a given secret is never echoed"
    );

    let (_, a) = app
        .api("POST", "/tenants", Some(json!({"name": "A", "slug": "a"})))
        .await
        .unwrap();
    let (_, b) = app
        .api("POST", "/tenants", Some(json!({"name": "B", "slug": "b"})))
        .await
        .unwrap();
    let (_, c) = app
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "C", "slug": "c", "parent_id": s(&a, "id")})),
        )
        .await
        .unwrap();
    let (_, c2) = app
        .api(
            "PATCH",
            &format!("/tenants/{}", s(&c, "id")),
            Some(json!({"name": "C2"})),
        )
        .await
        .unwrap();
    assert_eq!(c2["name"], "C2");
    app.api(
        "POST",
        &format!("/tenants/{}/move", s(&c, "id")),
        Some(json!({"new_parent_id": s(&b, "id")})),
    )
    .await
    .unwrap();
    app.api(
        "PUT",
        &format!("/tenants/{}/config/k", s(&c, "id")),
        Some(json!({"value": 1})),
    )
    .await
    .unwrap();
    app.api(
        "DELETE",
        &format!("/tenants/{}/config/k", s(&c, "id")),
        None,
    )
    .await
    .unwrap();
    let (_, p) = app
        .api(
            "POST",
            &format!("/tenants/{}/permissions", s(&c, "id")),
            Some(json!({"key": "p", "value": 1, "mode": "LOCKED"})),
        )
        .await
        .unwrap();
    app.api(
        "PATCH",
        &format!("/tenants/{}/permissions/{}", s(&c, "id"), s(&p, "id")),
        Some(json!({"value": 2})),
    )
    .await
    .unwrap();
    app.api(
        "DELETE",
        &format!("/tenants/{}/permissions/{}", s(&c, "id"), s(&p, "id")),
        None,
    )
    .await
    .unwrap();
    let (st, _) = app
        .api("DELETE", &format!("/tenants/{}", s(&c, "id")), None)
        .await
        .unwrap();
    assert_eq!(st, 204);

    // 3 tenant.created + 8 other changes on the "all" webhook.
    assert!(
        rx.wait_for(WAIT, |r| r.iter().filter(|x| x.path == "all").count() >= 11)
            .await,
        "deliveries did not arrive"
    );
    let got = rx.received_on("all");
    let mut kinds: Vec<String> = got
        .iter()
        .map(|r| r.headers["x-stratum-event"].clone())
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut want: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(kinds, want);

    for r in &got {
        let h = &r.headers;
        assert_eq!(h["content-type"], "application/json");
        assert!(h["user-agent"].starts_with("Stratum-Webhooks/"));
        assert_eq!(h["webhook-id"], h["x-stratum-delivery"]);
        assert_eq!(h["webhook-timestamp"], h["x-stratum-timestamp"]);
        stratum_crypto::verify_stratum(
            secret.as_bytes(),
            &h["x-stratum-timestamp"],
            &h["x-stratum-signature"],
            &r.body,
            now(),
            300,
        )
        .expect("X-Stratum-Signature verifies");
        stratum_crypto::verify_standard(
            &secret,
            &h["webhook-id"],
            &h["webhook-timestamp"],
            &h["webhook-signature"],
            &r.body,
            now(),
            300,
        )
        .expect("webhook-signature verifies");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["event"], h["x-stratum-event"].as_str());
        assert!(
            body["id"].is_string() && body["timestamp"].is_string() && body["data"].is_object()
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("whsec_"),
            "no secret in any payload"
        );
    }

    assert!(
        rx.wait_for(WAIT, |r| r.iter().filter(|x| x.path == "plain").count()
            >= 3)
            .await
    );
    for r in rx.received_on("plain") {
        let h = &r.headers;
        stratum_crypto::verify_standard(
            "a-plain-secret-of-some-length",
            &h["webhook-id"],
            &h["webhook-timestamp"],
            &h["webhook-signature"],
            &r.body,
            now(),
            300,
        )
        .expect("plain secrets sign with their UTF-8 bytes");
    }
    // The audit trail of the webhook never holds the secret.
    let leaked = count(
        &db.url,
        &format!(
            "SELECT count(*) AS n FROM audit_logs WHERE after_state::text LIKE '%{}%'",
            &secret[6..20]
        ),
    )
    .await
    .unwrap();
    assert_eq!(leaked, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_dead_letters_and_recovers() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("flaky", Behaviour::FailFirst(2));
    rx.set("dead", Behaviour::Status(503));
    let app = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let (_, flaky) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/flaky", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    let (_, dead) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/dead", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    app.api("POST", "/tenants", Some(json!({"name": "A", "slug": "a"})))
        .await
        .unwrap();

    // The flaky receiver gets it on the third attempt, with the same delivery id each time.
    assert!(
        rx.wait_for(WAIT, |r| r.iter().filter(|x| x.path == "flaky").count()
            >= 3)
            .await
    );
    let ids: Vec<String> = rx
        .received_on("flaky")
        .iter()
        .map(|r| r.headers["x-stratum-delivery"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let flaky_path = format!("/webhooks/{}/deliveries", s(&flaky, "id"));
    assert!(
        eventually(WAIT, || async {
            app.api("GET", &flaky_path, None).await.unwrap().1[0]["status"] == "success"
        })
        .await
    );
    let (_, ds) = app.api("GET", &flaky_path, None).await.unwrap();
    assert_eq!(ds[0]["attempts"], 3);
    assert_eq!(ds[0]["response_code"], 200);
    let attempts = count(
        &db.url,
        &format!(
            "SELECT count(*) AS n FROM webhook_delivery_attempts WHERE delivery_id = '{}'",
            s(&ds[0], "id")
        ),
    )
    .await
    .unwrap();
    assert_eq!(attempts, 3);

    // The dead one is dead-lettered after 3 attempts.
    let dead_path = format!("/webhooks/{}/deliveries?status=failed", s(&dead, "id"));
    assert!(
        eventually(WAIT, || async {
            app.api("GET", &dead_path, None)
                .await
                .unwrap()
                .1
                .as_array()
                .is_some_and(|a| a.len() == 1)
        })
        .await
    );
    let (_, stats) = app
        .api("GET", "/webhooks/deliveries/stats", None)
        .await
        .unwrap();
    assert_eq!(
        stats,
        json!({"total": 2, "pending": 0, "success": 1, "failed": 1})
    );
    let (_, failed) = app
        .api("GET", "/webhooks/deliveries/failed?limit=10", None)
        .await
        .unwrap();
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["webhook"]["id"], dead["id"]);
    assert_eq!(failed[0]["event"]["type"], "tenant.created");
    assert_eq!(failed[0]["attempts"], 3);
    assert_eq!(failed[0]["response_code"], 503);
    let (st, conflict) = app
        .api(
            "POST",
            &format!("/webhooks/deliveries/{}/retry", s(&ds[0], "id")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (st, conflict["error"]["code"].as_str()),
        (409, Some("DELIVERY_NOT_FAILED"))
    );

    // The receiver recovers; retry-all delivers it.
    rx.set("dead", Behaviour::Ok);
    let before = rx.received_on("dead").len();
    let (st, retried) = app
        .api("POST", "/webhooks/deliveries/retry-all", None)
        .await
        .unwrap();
    assert_eq!((st, retried), (200, json!({"retried": 1})));
    assert!(
        rx.wait_for(WAIT, |r| r.iter().filter(|x| x.path == "dead").count()
            > before)
            .await
    );
    assert!(
        eventually(WAIT, || async {
            app.api("GET", "/webhooks/deliveries/stats", None)
                .await
                .unwrap()
                .1["success"]
                == 2
        })
        .await
    );
    let (_, failed) = app
        .api("GET", "/webhooks/deliveries/failed", None)
        .await
        .unwrap();
    assert_eq!(failed, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_deactivates_and_inactive_gets_nothing() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("gone", Behaviour::Status(410));
    let app = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let (_, gone) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/gone", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    let (_, off) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/off", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    let (st, off2) = app
        .api(
            "PATCH",
            &format!("/webhooks/{}", s(&off, "id")),
            Some(json!({"active": false})),
        )
        .await
        .unwrap();
    assert_eq!((st, off2["active"].as_bool()), (200, Some(false)));
    app.api("POST", "/tenants", Some(json!({"name": "A", "slug": "a"})))
        .await
        .unwrap();

    let path = format!("/webhooks/{}", s(&gone, "id"));
    assert!(
        eventually(WAIT, || async {
            app.api("GET", &path, None).await.unwrap().1["active"] == false
        })
        .await
    );
    assert_eq!(rx.received_on("gone").len(), 1, "410 is final: no retry");
    // The engine's own change is audited like any other: by the system, one more link of
    // the webhook's history (before active, after inactive).
    let (_, entries) = app
        .api(
            "GET",
            "/audit-logs?resource_type=webhook&action=webhook.disabled&actor_id=system&limit=10",
            None,
        )
        .await
        .unwrap();
    let mine: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource_id"] == gone["id"])
        .collect();
    assert_eq!(mine.len(), 1, "{entries}");
    assert_eq!(mine[0]["actor_type"], "system");
    assert_eq!(mine[0]["before_state"]["active"], true);
    assert_eq!(mine[0]["after_state"]["active"], false);
    assert_eq!(mine[0]["after_state"]["disabled_reason"], "gone");
    assert_eq!(mine[0]["before_state"]["secret"], "[REDACTED]");
    let (_, now) = app.api("GET", &path, None).await.unwrap();
    assert_eq!(now["disabled_reason"], "gone");
    assert_eq!(mine[0]["after_state"]["updated_at"], now["updated_at"]);
    let (_, ds) = app
        .api("GET", &format!("{path}/deliveries"), None)
        .await
        .unwrap();
    assert_eq!(ds[0]["status"], "failed");
    assert_eq!(ds[0]["attempts"], 1);

    app.api("POST", "/tenants", Some(json!({"name": "B", "slug": "b"})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received_on("gone").len(), 1);
    assert!(rx.received_on("off").is_empty());
    let pending = count(&db.url, "SELECT count(*) AS n FROM webhook_deliveries")
        .await
        .unwrap();
    assert_eq!(pending, 1, "inactive webhooks get no deliveries at all");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_validation_and_test_endpoint() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("teapot", Behaviour::Status(418));
    let app = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let bad = [
        json!({"url": "ftp://x.example/h", "events": ["tenant.created"]}),
        json!({"url": "https://user:pw@x.example/h", "events": ["tenant.created"]}),
        json!({"url": format!("{}/ok", rx.base), "events": []}),
        json!({"url": format!("{}/ok", rx.base), "events": ["tenant.exploded"]}),
        json!({"url": format!("{}/ok", rx.base), "events": ["tenant.created", "tenant.created"]}),
        json!({"url": format!("{}/ok", rx.base), "events": ["tenant.created"], "secret": "short"}),
        json!({"url": format!("{}/ok", rx.base), "events": ["tenant.created"], "tenant_id": "nope"}),
    ];
    for b in bad {
        let (st, body) = app.api("POST", "/webhooks", Some(b.clone())).await.unwrap();
        assert_eq!(st, 400, "{b} → {body}");
        assert!(
            ["VALIDATION_ERROR", "WEBHOOK_URL_INVALID"]
                .contains(&body["error"]["code"].as_str().unwrap()),
            "{body}"
        );
    }
    let (st, body) = app
        .api("POST", "/webhooks", Some(json!({"url": format!("{}/ok", rx.base), "events": ["tenant.created"], "tenant_id": uuid::Uuid::now_v7()})))
        .await
        .unwrap();
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("TENANT_NOT_FOUND"))
    );

    let (_, ok) = app.api("POST", "/webhooks", Some(json!({"url": format!("{}/ok", rx.base), "events": ["tenant.created"], "description": "d"}))).await.unwrap();
    let (st, t) = app
        .api("POST", &format!("/webhooks/{}/test", s(&ok, "id")), None)
        .await
        .unwrap();
    assert_eq!(
        (st, t),
        (200, json!({"success": true, "response_code": 200}))
    );
    let test_req = rx.received_on("ok").pop().unwrap();
    assert_eq!(test_req.headers["x-stratum-event"], "webhook.test");

    let (_, tea) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/teapot", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    let (_, t) = app
        .api("POST", &format!("/webhooks/{}/test", s(&tea, "id")), None)
        .await
        .unwrap();
    assert_eq!(t["success"], false);
    assert_eq!(t["response_code"], 418);

    // A dead target is a report, never a 500.
    let port = stratum_e2e::free_port();
    let (_, nobody) = app
        .api(
            "POST",
            "/webhooks",
            Some(
                json!({"url": format!("http://127.0.0.1:{port}/x"), "events": ["tenant.created"]}),
            ),
        )
        .await
        .unwrap();
    let (st, t) = app
        .api(
            "POST",
            &format!("/webhooks/{}/test", s(&nobody, "id")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(t["success"], false);
    assert!(t["response_code"].is_null());
    assert!(t["error"].is_string());

    let (_, list) = app.api("GET", "/webhooks", None).await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (st, _) = app
        .api("DELETE", &format!("/webhooks/{}", s(&ok, "id")), None)
        .await
        .unwrap();
    assert_eq!(st, 204);
    let (st, body) = app
        .api("GET", &format!("/webhooks/{}", s(&ok, "id")), None)
        .await
        .unwrap();
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("WEBHOOK_NOT_FOUND"))
    );
    let actions = count(&db.url, "SELECT count(*) AS n FROM audit_logs WHERE action IN ('webhook.created','webhook.tested','webhook.deleted')").await.unwrap();
    assert_eq!(actions, 3 + 3 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_targets_are_refused_without_the_switch() {
    let db = TestDb::new().await;
    let mut env = default_env(&db);
    env.retain(|(k, _)| k != "STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS");
    let app = Stratum::start(&["serve"], &env).await.unwrap();
    for url in [
        "http://example.com/h",
        "https://127.0.0.1/h",
        "https://localhost/h",
        "https://2130706433/h",
        "https://[::1]/h",
        "https://169.254.169.254/latest",
        "https://10.1.2.3/h",
    ] {
        let (st, body) = app
            .api(
                "POST",
                "/webhooks",
                Some(json!({"url": url, "events": ["tenant.created"]})),
            )
            .await
            .unwrap();
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (400, Some("WEBHOOK_URL_INVALID")),
            "{url}: {body}"
        );
    }
}
