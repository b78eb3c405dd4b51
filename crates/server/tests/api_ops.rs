//! Operations surface: metrics, rate limiting, request ids, readiness.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::sync::Arc;

use actix_web::http::{Method, StatusCode};
use actix_web::test::{call_service, read_body, TestRequest};
use common::{app, call, harness, harness_with, ADMIN};
use serde_json::json;
use stratum_api::ratelimit::{RateLimitConfig, RateLimiter};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_template() {
    let h = harness().await;
    let app = app!(h);
    let t = call(
        &app,
        Method::POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let id = t.body["id"].as_str().unwrap().to_owned();
    call(
        &app,
        Method::GET,
        &format!("/api/v1/tenants/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    call(
        &app,
        Method::GET,
        &format!("/api/v1/tenants/{}", uuid::Uuid::now_v7()),
        Some(ADMIN),
        None,
    )
    .await;
    let res = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    assert!(text.contains(r#"stratum_http_requests_total{route="/api/v1/tenants/{id}",method="GET",status="200"} 1"#), "{text}");
    assert!(text.contains(
        r#"stratum_http_requests_total{route="/api/v1/tenants/{id}",method="GET",status="404"} 1"#
    ));
    assert!(text.contains(
        r#"stratum_http_requests_total{route="/api/v1/tenants",method="POST",status="201"} 1"#
    ));
    assert!(text.contains("stratum_db_pool_max_size 16"));
    assert!(!text.contains(&id), "ids never become label values");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_rate_limited_except_the_bootstrap_key() {
    let h = harness_with(|s| {
        s.rate_limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1.0,
            burst: 3.0,
            limit_bootstrap: false,
        })
        .map(Arc::new);
    })
    .await;
    let key = {
        let app = app!(h);
        let k = call(
            &app,
            Method::POST,
            "/api/v1/api-keys",
            Some(ADMIN),
            Some(json!({"scopes": ["read"]})),
        )
        .await;
        k.body["plaintext_key"].as_str().unwrap().to_owned()
    };
    let app = app!(h);
    for _ in 0..3 {
        assert_eq!(
            call(&app, Method::GET, "/api/v1/tenants", Some(&key), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    let limited = call(&app, Method::GET, "/api/v1/tenants", Some(&key), None).await;
    assert_eq!(
        (limited.status, limited.code()),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );
    assert!(
        limited
            .headers
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    for _ in 0..10 {
        assert_eq!(
            call(&app, Method::GET, "/api/v1/tenants", Some(ADMIN), None)
                .await
                .status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_or_minted_and_ready_checks_the_database() {
    let h = harness().await;
    let app = app!(h);
    let res = call_service(
        &app,
        TestRequest::get()
            .uri("/health")
            .insert_header(("X-Request-Id", "abc-123"))
            .to_request(),
    )
    .await;
    assert_eq!(res.headers().get("x-request-id").unwrap(), "abc-123");
    let res = call_service(
        &app,
        TestRequest::get()
            .uri("/health")
            .insert_header(("X-Request-Id", "bad id with spaces"))
            .to_request(),
    )
    .await;
    assert_ne!(res.headers().get("x-request-id").unwrap(), "bad id");
    let res = call_service(&app, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    // A database with a migration missing is not ready.
    common::sql::exec(&h.db.url, "DELETE FROM __diesel_schema_migrations WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)").await;
    let res = call_service(&app, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_slice(&read_body(res).await).unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_gets_405_with_the_error_body() {
    let h = harness().await;
    let app = app!(h);
    let r = call(&app, Method::PUT, "/api/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    assert!(r.headers.get("allow").is_some());
}
