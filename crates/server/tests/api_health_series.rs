//! `GET /webhooks/:id/health/series` and `GET /webhooks/:id/deliveries/:delivery_id`: their
//! shape, their validation and the webhook's visibility rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use common::{app, call, harness, sql, ADMIN, GET, POST};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn the_series_and_a_delivery_follow_the_webhooks_visibility_and_validate_their_input() {
    let h = harness().await;
    let app = app!(h);
    let mut tenants = Vec::new();
    for slug in ["acme", "bravo"] {
        let r = call(
            &app,
            POST,
            "/api/v1/tenants",
            Some(ADMIN),
            Some(json!({"name": slug, "slug": slug})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        tenants.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (&tenants[0], &tenants[1]);
    let (w, d, e) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let url = &h.db.url;
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhooks (id, tenant_id, url, events, secret_encrypted)
             VALUES ('{w}', '{a}', 'https://example.com/h', '{{tenant.updated}}', 'x')"
        ),
    )
    .await;
    sql::exec(url, &format!("INSERT INTO webhook_events (id, event_type, tenant_id, payload) VALUES ('{e}', 'tenant.updated', '{a}', '{{\"name\": \"Acme\"}}')")).await;
    sql::exec(url, &format!("INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id, status, attempts) VALUES ('{d}', '{w}', '{e}', 'tenant.updated', '{a}', 'success', 2)")).await;
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code, duration_ms, created_at)
             VALUES (gen_random_uuid(), '{d}', '{e}', 1, 500, 40, now() - interval '2 seconds'),
                    (gen_random_uuid(), '{d}', '{e}', 2, 200, 10, now() - interval '1 second')"
        ),
    )
    .await;

    // The default: a day in 24 one-hour buckets; the last one holds both attempts.
    let series = format!("/api/v1/webhooks/{w}/health/series");
    let r = call(&app, GET, &series, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["webhook_id"], json!(w));
    assert_eq!(
        (&r.body["window_seconds"], &r.body["bucket_seconds"]),
        (&json!(86_400), &json!(3600))
    );
    let buckets = r.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    assert_eq!(buckets[0]["attempts"], 0);
    assert_eq!(buckets[0]["success_rate"], json!(null));
    assert_eq!(buckets[0]["p99_latency_ms"], json!(null));
    assert_eq!(buckets[0]["start"], r.body["from"]);
    let last = &buckets[23];
    assert!(
        last["attempts"] == 2 || buckets[22]["attempts"].as_i64().unwrap() > 0,
        "both attempts fall in the last bucket unless the hour turned between them: {}",
        r.body
    );
    let total: i64 = buckets
        .iter()
        .map(|b| b["attempts"].as_i64().unwrap())
        .sum();
    let ok: i64 = buckets
        .iter()
        .map(|b| b["successes"].as_i64().unwrap())
        .sum();
    assert_eq!((total, ok), (2, 1));

    // Explicit window and bucket: 10 minutes in 2-minute buckets.
    let r = call(
        &app,
        GET,
        &format!("{series}?window=600&bucket=120"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["buckets"].as_array().unwrap().len(), 5);
    assert_eq!(r.body["bucket_seconds"], 120);

    // Bad parameters: 400, the field named when the value is an integer out of bounds.
    for (q, field) in [
        ("window=59", "window"),
        ("window=604801", "window"),
        ("window=-1", "window"),
        ("bucket=59", "bucket"),
        ("window=3600&bucket=7200", "bucket"),
        ("window=604800&bucket=60", "bucket"),
        // Not integers: the query itself is refused (the message does not name the field).
        ("window=day", ""),
        ("bucket=1.5", ""),
    ] {
        let r = call(&app, GET, &format!("{series}?{q}"), Some(ADMIN), None).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{q}: {}",
            r.body
        );
        assert!(r.body.to_string().contains(field), "{q}: {}", r.body);
    }

    // One delivery with its webhook and event.
    let one = format!("/api/v1/webhooks/{w}/deliveries/{d}");
    let r = call(&app, GET, &one, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], json!(d));
    assert_eq!(r.body["status"], "success");
    assert_eq!(r.body["webhook"]["url"], "https://example.com/h");
    assert_eq!(r.body["event"]["id"], json!(e));
    assert_eq!(r.body["event"]["type"], "tenant.updated");
    assert_eq!(r.body["event"]["data"], json!({"name": "Acme"}));
    let unknown = Uuid::now_v7();
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/deliveries/{unknown}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND")
    );

    // Keys scoped to each tenant: the owner's sees both, the other one gets 404 (even with
    // parameters that are valid).
    let mut keys = Vec::new();
    for t in [a, b] {
        let k = call(
            &app,
            POST,
            "/api/v1/api-keys",
            Some(ADMIN),
            Some(json!({"tenant_id": t, "scopes": ["read"]})),
        )
        .await;
        keys.push(k.body["plaintext_key"].as_str().unwrap().to_owned());
    }
    for p in [
        series.clone(),
        format!("{series}?window=3600&bucket=60"),
        one,
    ] {
        let r = call(&app, GET, &p, Some(&keys[0]), None).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        let r = call(&app, GET, &p, Some(&keys[1]), None).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "WEBHOOK_NOT_FOUND"),
            "{p}"
        );
    }
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{unknown}/health/series"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_favicon_is_served_from_the_binary_without_a_key() {
    let h = harness().await;
    let app = app!(h);
    let req = actix_web::test::TestRequest::get()
        .uri("/favicon.ico")
        .to_request();
    let res = actix_web::test::call_service(&app, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers().get("content-type").unwrap(), "image/svg+xml");
    let body = actix_web::test::read_body(res).await;
    assert!(body.starts_with(b"<svg "));
}
