//! Delivery controls through the real application on real PostgreSQL: the new webhook
//! fields and their validation, `rotate-secret` (shape, audit, visibility, concurrency), the
//! breaker in `health`, and re-enabling a disabled webhook.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use common::{app, call, harness, sql, ADMIN, GET, PATCH, POST};
use serde_json::{json, Value};

/// How many previous secrets webhook `id` keeps.
async fn previous_secrets(url: &str, id: &str) -> i64 {
    sql::count(
        url,
        &format!(
            "SELECT cardinality(previous_secrets)::bigint AS n FROM webhooks WHERE id = '{id}'"
        ),
    )
    .await
}

fn hook(extra: Value) -> Value {
    let mut body = json!({"url": "https://hooks.example.com/in", "events": ["tenant.created"]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_fields_round_trip_and_are_validated() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let r = call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(hook(
            json!({"rate_limit_per_second": 50, "ordering": "fifo"}),
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["rate_limit_per_second"], 50);
    assert_eq!(r.body["ordering"], "fifo");
    assert_eq!(r.body["disabled_reason"], Value::Null);
    assert_eq!(r.body["previous_secret_expires_at"], Value::Null);
    let id = r.body["id"].as_str().unwrap().to_owned();

    let plain = call(&app, POST, "/api/v1/webhooks", k, Some(hook(json!({})))).await;
    assert_eq!(plain.body["rate_limit_per_second"], Value::Null);
    assert_eq!(plain.body["ordering"], "unordered");

    for bad in [
        json!({"rate_limit_per_second": 0}),
        json!({"rate_limit_per_second": 10001}),
        json!({"rate_limit_per_second": -1}),
        json!({"rate_limit_per_second": 1.5}),
        json!({"rate_limit_per_second": "10"}),
        json!({"ordering": "lifo"}),
        json!({"ordering": null}),
        json!({"ordering": 1}),
    ] {
        let r = call(&app, POST, "/api/v1/webhooks", k, Some(hook(bad.clone()))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_eq!(r.code(), "VALIDATION_ERROR");
        let r = call(
            &app,
            PATCH,
            &format!("/api/v1/webhooks/{id}"),
            k,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "PATCH {bad}: {}", r.body);
    }
    let r = call(
        &app,
        PATCH,
        &format!("/api/v1/webhooks/{id}"),
        k,
        Some(json!({"ordering": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // null removes the limit; the ordering switches back.
    let r = call(
        &app,
        PATCH,
        &format!("/api/v1/webhooks/{id}"),
        k,
        Some(json!({"rate_limit_per_second": null, "ordering": "unordered"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["rate_limit_per_second"], Value::Null);
    assert_eq!(r.body["ordering"], "unordered");
    let got = call(&app, GET, &format!("/api/v1/webhooks/{id}"), k, None).await;
    assert_eq!(got.body, r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_secret_answers_the_webhook_keeps_the_old_secret_and_audits_no_secret() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let created = call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(hook(json!({"secret": "the-first-secret-0123"}))),
    )
    .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}/rotate-secret");

    let r = call(
        &app,
        POST,
        &path,
        k,
        Some(json!({"grace_period_seconds": 3600})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let generated = r.body["secret"].as_str().unwrap().to_owned();
    assert!(generated.starts_with("whsec_"));
    assert!(r.body["previous_secret_expires_at"].is_string());
    assert_eq!(
        sql::count(&h.db.url, &format!(
            "SELECT count(*) AS n FROM webhooks WHERE id = '{id}'
                AND previous_secrets_expire_at[1] BETWEEN now() + interval '59 minutes' AND now() + interval '1 hour'"
        )).await,
        1,
        "the replaced secret signs for an hour"
    );
    assert!(r.headers.get("etag").is_some());

    // A given secret is not echoed; the new one replaces, the previous keeps its place.
    let r = call(
        &app,
        POST,
        &path,
        k,
        Some(json!({"secret": "the-third-secret-0123", "grace_period_seconds": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("secret").is_none());
    assert_eq!(
        previous_secrets(&h.db.url, &id).await,
        1,
        "the first secret is still in its grace period; the second went at once"
    );

    // The audit entries name no secret.
    let entries = sql::texts(&h.db.url, "SELECT (before_state::text || after_state::text) AS t FROM audit_logs WHERE action = 'webhook.secret_rotated'").await;
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert!(
            !e.contains(&generated)
                && !e.contains("the-first-secret")
                && !e.contains("the-third-secret"),
            "{e}"
        );
        assert!(e.contains("[REDACTED]"));
    }

    for (bad, why) in [
        (json!({"grace_period_seconds": 604801}), "too long"),
        (json!({"grace_period_seconds": -1}), "negative"),
        (json!({"secret": "short"}), "short secret"),
        (json!({"secret": null}), "null secret"),
        (json!({"grace_period_seconds": null}), "null grace period"),
        (json!({"other": 1}), "unknown field"),
    ] {
        let r = call(&app, POST, &path, k, Some(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.body);
    }
    let missing = format!("/api/v1/webhooks/{}/rotate-secret", uuid::Uuid::now_v7());
    assert_eq!(
        call(&app, POST, &missing, k, Some(json!({}))).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_subtree_cannot_rotate_and_if_match_guards_rotation() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let a = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let b = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await;
    let created = call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(hook(json!({"tenant_id": a.body["id"]}))),
    )
    .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let key = call(
        &app,
        POST,
        "/api/v1/api-keys",
        k,
        Some(json!({"name": "b key", "tenant_id": b.body["id"], "scopes": ["write"]})),
    )
    .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
    let b_key = key.body["plaintext_key"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}/rotate-secret");
    let r = call(&app, POST, &path, Some(&b_key), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(previous_secrets(&h.db.url, &id).await, 0);
    let r = common::call_any(&app, POST, &path, k, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK);
    // A stale If-Match is 412 and writes nothing.
    let req = actix_web::test::TestRequest::default()
        .method(POST)
        .uri(&path)
        .insert_header(("X-API-Key", ADMIN))
        .insert_header(("If-Match", "\"1\""))
        .set_json(json!({}))
        .to_request();
    let resp = actix_web::test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(previous_secrets(&h.db.url, &id).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_rotations_keep_every_replaced_secret_in_order() {
    let h = harness().await;
    let app = std::rc::Rc::new(app!(h));
    let created = call(
        &*app,
        POST,
        "/api/v1/webhooks",
        Some(ADMIN),
        Some(hook(json!({}))),
    )
    .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}/rotate-secret");
    // Eight rotations at once, without If-Match: each reads what it replaces inside its
    // own write, so none is lost and each secret it replaced is kept.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let body = json!({"secret": format!("concurrent-secret-{i:02}-xxxx")});
            call(&*app, POST, &path, Some(ADMIN), Some(body))
        })
        .collect();
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(previous_secrets(&h.db.url, &id).await, 8);
    assert_eq!(
        sql::count(&h.db.url, &format!("SELECT count(DISTINCT s)::bigint AS n FROM webhooks, unnest(array_append(previous_secrets, secret_encrypted)) s WHERE id = '{id}'")).await,
        9,
        "the first secret and the eight new ones, none twice"
    );
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'webhook.secret_rotated'"
        )
        .await,
        8
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_shows_the_breaker_and_turning_a_disabled_webhook_on_closes_it() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let created = call(&app, POST, "/api/v1/webhooks", k, Some(hook(json!({})))).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let health = call(&app, GET, &format!("/api/v1/webhooks/{id}/health"), k, None).await;
    assert_eq!(
        health.body["breaker"],
        json!({"state": "closed", "consecutive_failures": 0, "opened_at": null, "next_probe_at": null})
    );
    sql::exec(
        &h.db.url,
        &format!(
            "UPDATE webhook_controls SET state = 'open', consecutive_failures = 12, opened_at = now(),
                    next_probe_at = now() + interval '30 seconds', cooldown_ms = 30000 WHERE webhook_id = '{id}'"
        ),
    )
    .await;
    sql::exec(
        &h.db.url,
        &format!(
            "UPDATE webhooks SET active = false, disabled_reason = 'failing' WHERE id = '{id}'"
        ),
    )
    .await;
    let health = call(&app, GET, &format!("/api/v1/webhooks/{id}/health"), k, None).await;
    assert_eq!(health.body["breaker"]["state"], "open");
    assert_eq!(health.body["breaker"]["consecutive_failures"], 12);
    assert!(health.body["breaker"]["next_probe_at"].is_string());
    let got = call(&app, GET, &format!("/api/v1/webhooks/{id}"), k, None).await;
    assert_eq!(got.body["disabled_reason"], "failing");

    // Turning it on clears the reason and closes the breaker; a later change keeps both.
    let r = call(
        &app,
        PATCH,
        &format!("/api/v1/webhooks/{id}"),
        k,
        Some(json!({"active": true})),
    )
    .await;
    assert_eq!(r.body["disabled_reason"], Value::Null);
    assert_eq!(r.body["active"], true);
    let health = call(&app, GET, &format!("/api/v1/webhooks/{id}/health"), k, None).await;
    assert_eq!(health.body["breaker"]["state"], "closed");
    assert_eq!(health.body["breaker"]["consecutive_failures"], 0);
}
