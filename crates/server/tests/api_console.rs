//! The console's static files, and the two routes it added: webhook health and delivery
//! attempts, with the same visibility rules as the webhook itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use common::{app, call, call_any, harness, sql, ADMIN, GET, POST};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_without_a_key_with_a_strict_policy() {
    let h = harness().await;
    let app = app!(h);

    let r = call(&app, GET, "/", None, None).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers.get("location").unwrap(), "/console/");

    for (path, ctype, needle) in [
        ("/console/", "text/html", "<title>Stratum console</title>"),
        ("/console/index.html", "text/html", "id=\"api-key\""),
        ("/console/console.css", "text/css", "font"),
        ("/console/console.js", "text/javascript", "sessionStorage"),
    ] {
        let req = actix_web::test::TestRequest::get().uri(path).to_request();
        let res = actix_web::test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let hdr = |n: &str| {
            res.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(hdr("content-type").starts_with(ctype), "{path}");
        assert_eq!(hdr("cache-control"), "no-cache", "{path}");
        let csp = hdr("content-security-policy");
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(hdr("x-content-type-options"), "nosniff");
        let body = actix_web::test::read_body(res).await;
        assert!(
            String::from_utf8_lossy(&body).contains(needle),
            "{path} lacks {needle}"
        );
    }

    // Nothing else is served from there, and the answer is the usual error body.
    for path in [
        "/console/secret.txt",
        "/console/..%2FCargo.toml",
        "/console",
    ] {
        let r = call_any(&app, GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.code(), "NOT_FOUND", "{path}");
    }
    // The API behind it still wants a key.
    let r = call_any(&app, GET, "/api/v1/webhooks", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn tenant(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
    slug: &str,
) -> String {
    let r = call(
        app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": slug, "slug": slug})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_attempts_follow_the_webhooks_visibility() {
    let h = harness().await;
    let app = app!(h);
    let (a, b) = (tenant(&app, "acme").await, tenant(&app, "bravo").await);
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
    sql::exec(url, &format!("INSERT INTO webhook_events (id, event_type, tenant_id, payload) VALUES ('{e}', 'tenant.updated', '{a}', '{{}}')")).await;
    sql::exec(url, &format!("INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id, status, attempts) VALUES ('{d}', '{w}', '{e}', 'tenant.updated', '{a}', 'success', 2)")).await;
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code, duration_ms, error, response_body, created_at)
             VALUES (gen_random_uuid(), '{d}', '{e}', 1, 500, 40, NULL, 'oops', now() - interval '2 seconds'),
                    (gen_random_uuid(), '{d}', '{e}', 2, 200, 10, NULL, 'ok', now() - interval '1 second')"
        ),
    )
    .await;

    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/health"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["webhook_id"], json!(w));
    assert_eq!(r.body["window_seconds"], 3600);
    assert_eq!(r.body["attempts"], 2);
    assert_eq!(r.body["successes"], 1);
    assert_eq!(r.body["success_rate"], 0.5);
    assert_eq!(r.body["p50_latency_ms"], 25.0);
    assert_eq!(r.body["last_error"], "receiver answered 500");
    assert!(r.body["last_error_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.body["queue_depth"], 0);

    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/deliveries/{d}/attempts"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows = r.body.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["attempt"], 1);
    assert_eq!(rows[0]["status_code"], 500);
    assert_eq!(rows[0]["duration_ms"], 40);
    assert_eq!(rows[0]["response_body"], "oops");
    assert_eq!(rows[1]["status_code"], 200);

    // Keys scoped to each tenant: the owner's sees it, the other one gets 404.
    let mut keys = Vec::new();
    for t in [&a, &b] {
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
    let paths = [
        format!("/api/v1/webhooks/{w}/health"),
        format!("/api/v1/webhooks/{w}/deliveries/{d}/attempts"),
    ];
    for p in &paths {
        assert_eq!(
            call(&app, GET, p, Some(&keys[0]), None).await.status,
            StatusCode::OK,
            "{p}"
        );
        let r = call(&app, GET, p, Some(&keys[1]), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(r.code(), "WEBHOOK_NOT_FOUND", "{p}");
    }

    // Unknown ids and a delivery of another webhook are 404; a bad UUID is 400.
    let unknown = Uuid::now_v7();
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{unknown}/health"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/deliveries/{unknown}/attempts"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND")
    );
    let r = call(&app, GET, "/api/v1/webhooks/nope/health", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/deliveries/nope/attempts"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
