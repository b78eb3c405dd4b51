//! Hostile and careless input through the real application on real PostgreSQL: every one
//! of these must be a clear 4xx with the API.md error body, never a 5xx, never a silent
//! success, and no request may grow the process's memory or `/metrics` without bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::net::SocketAddr;

use actix_web::http::{Method, StatusCode};
use actix_web::test::TestRequest;
use common::{
    app, call, call_any, call_raw, harness, harness_with, harness_with_args, id, sql, Reply,
    TestApp, ADMIN, GET, PATCH, POST, PUT,
};
use serde_json::{json, Value};

/// A 400 `VALIDATION_ERROR` with the error body; `field`, when given, is named in `details`.
fn assert_400(r: &Reply, field: Option<&str>, what: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.body);
    assert_eq!(r.code(), "VALIDATION_ERROR", "{what}: {}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{what}: {}", r.body);
    if let Some(f) = field {
        let named = r.body["error"]["details"][0]["field"]
            .as_str()
            .unwrap_or("");
        assert!(
            named == f
                || named.starts_with(&format!("{f}."))
                || named.starts_with(&format!("{f}[")),
            "{what}: expected field {f}, got {}",
            r.body
        );
    }
}

/// A tenant, a webhook on it and a permission policy: the things the cases below touch.
struct World {
    tenant: String,
    webhook: String,
    policy: String,
}

async fn world<S: TestApp<B>, B: actix_web::body::MessageBody>(app: &S) -> World {
    let t = call(
        app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "Acme", "slug": "acme"})),
    )
    .await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
    let tenant = id(&t.body);
    let w = call(
        app,
        POST,
        "/api/v1/webhooks",
        Some(ADMIN),
        Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["tenant.created"], "tenant_id": tenant})),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
    let p = call(
        app,
        POST,
        &format!("/api/v1/tenants/{tenant}/permissions"),
        Some(ADMIN),
        Some(json!({"key": "billing.read", "value": true, "mode": "INHERITED"})),
    )
    .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    World {
        tenant,
        webhook: id(&w.body),
        policy: id(&p.body),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_in_any_stored_string_or_filter_is_a_400_naming_the_field() {
    let h = harness().await;
    let app = app!(h);
    let w = world(&app).await;
    let t = &w.tenant;
    let nul = "a\u{0}b";
    let cases: Vec<(Method, String, Value, &str)> = vec![
        (
            POST,
            "/api/v1/tenants".into(),
            json!({"name": nul, "slug": "n1"}),
            "name",
        ),
        (
            POST,
            "/api/v1/tenants".into(),
            json!({"name": "N", "slug": "n2", "metadata": {"k": nul}}),
            "metadata",
        ),
        (
            POST,
            "/api/v1/tenants".into(),
            json!({"name": "N", "slug": "n3", "metadata": {nul: 1}}),
            "metadata",
        ),
        (
            POST,
            "/api/v1/tenants".into(),
            json!({"name": "N", "slug": "n4", "metadata": {"a": [1, {"b": nul}]}}),
            "metadata",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"name": nul}),
            "name",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"metadata": {"k": nul}}),
            "metadata",
        ),
        (
            PUT,
            format!("/api/v1/tenants/{t}/config/k"),
            json!({"value": nul}),
            "value",
        ),
        (
            PUT,
            format!("/api/v1/tenants/{t}/config/k"),
            json!({"value": {"deep": [nul]}}),
            "value",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/permissions"),
            json!({"key": "p", "value": nul, "mode": "LOCKED"}),
            "value",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/permissions"),
            json!({"key": nul, "value": 1, "mode": "LOCKED"}),
            "key",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}/permissions/{}", w.policy),
            json!({"value": [nul]}),
            "value",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/consent"),
            json!({"subject_id": "u1", "purpose": "email", "metadata": {"m": nul}}),
            "metadata",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/consent"),
            json!({"subject_id": nul, "purpose": "email"}),
            "subject_id",
        ),
        (
            POST,
            "/api/v1/webhooks".into(),
            json!({"url": "http://127.0.0.1:9/x", "events": ["tenant.created"], "description": nul}),
            "description",
        ),
        (
            PATCH,
            format!("/api/v1/webhooks/{}", w.webhook),
            json!({"description": nul}),
            "description",
        ),
        (
            POST,
            "/api/v1/api-keys".into(),
            json!({"name": nul}),
            "name",
        ),
    ];
    let n = cases.len();
    for (method, path, body, field) in cases {
        let r = call(&app, method.clone(), &path, Some(ADMIN), Some(body.clone())).await;
        assert_400(&r, Some(field), &format!("{method} {path} {body}"));
    }
    // The domain refuses it too, whatever edge a value comes through.
    for (path, field) in [
        ("/api/v1/audit-logs?action=a%00b", "action"),
        ("/api/v1/audit-logs?actor_id=%00", "actor_id"),
        (
            "/api/v1/audit-logs?resource_type=tenant%00",
            "resource_type",
        ),
    ] {
        let r = call(&app, GET, path, Some(ADMIN), None).await;
        assert_400(&r, Some(field), path);
    }
    for path in [
        format!("/api/v1/tenants/{t}/consent?subject_id=%00"),
        format!("/api/v1/tenants/{t}/consent?purpose=a%00"),
        format!("/api/v1/tenants/{t}/consent/email?subject_id=u%00"),
    ] {
        let method = if path.contains("/consent/") {
            Method::DELETE
        } else {
            GET
        };
        let r = call(&app, method, &path, Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
    }
    // Nothing was stored: one tenant, its one policy, no consent record, one webhook.
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM tenants").await,
        1
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM consent_records").await,
        0
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM webhooks").await,
        1
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM api_keys").await,
        0
    );
    eprintln!("hostile cases: {}", n + 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_json_reads_back_whatever_its_numbers_and_nesting() {
    let h = harness().await;
    let app = app!(h);
    let w = world(&app).await;
    let t = &w.tenant;
    // Found by Schemathesis: f64::MIN came back from jsonb as its exact 309-digit decimal
    // and failed to parse (500 on every later read of config and audit).
    let mut n = 0;
    for (i, v) in [
        f64::MIN,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -0.0,
        1e300,
        123_456_789.123_456_78,
    ]
    .into_iter()
    .enumerate()
    {
        let r = call(
            &app,
            PUT,
            &format!("/api/v1/tenants/{t}/config/n{i}"),
            Some(ADMIN),
            Some(json!({"value": v})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.body);
        n += 1;
    }
    let r = call(
        &app,
        PATCH,
        &format!("/api/v1/tenants/{t}"),
        Some(ADMIN),
        Some(json!({"metadata": {"m": f64::MIN}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let config = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(config.status, StatusCode::OK, "{}", config.body);
    assert_eq!(config.body["n0"]["value"].as_f64(), Some(f64::MIN));
    assert_eq!(config.body["n1"]["value"].as_f64(), Some(f64::MAX));
    assert_eq!(config.body["n3"]["value"].as_f64(), Some(5e-324));
    let audit = call(&app, GET, "/api/v1/audit-logs?limit=100", Some(ADMIN), None).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let tenant = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(tenant.body["metadata"]["m"].as_f64(), Some(f64::MIN));
    // Nesting: 64 levels are stored and read back; 65 are refused before storage.
    let mut deep = json!(1);
    for _ in 0..64 {
        deep = json!([deep]);
    }
    let ok = call(
        &app,
        PUT,
        &format!("/api/v1/tenants/{t}/config/deep"),
        Some(ADMIN),
        Some(json!({"value": deep.clone()})),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let deeper = json!([deep]);
    for (method, path, body, field) in [
        (
            PUT,
            format!("/api/v1/tenants/{t}/config/deeper"),
            json!({"value": deeper.clone()}),
            "value",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"metadata": {"a": deeper.clone()}}),
            "metadata",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/permissions"),
            json!({"key": "d", "value": deeper.clone(), "mode": "LOCKED"}),
            "value",
        ),
        (
            POST,
            format!("/api/v1/tenants/{t}/consent"),
            json!({"subject_id": "u", "purpose": "p", "metadata": {"a": deeper.clone()}}),
            "metadata",
        ),
    ] {
        let r = call(&app, method.clone(), &path, Some(ADMIN), Some(body)).await;
        assert_400(&r, Some(field), &format!("{method} {path}"));
        n += 1;
    }
    let config = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(config.status, StatusCode::OK, "{}", config.body);
    let audit = call(&app, GET, "/api/v1/audit-logs?limit=100", Some(ADMIN), None).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    eprintln!("hostile cases: {}", n + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_must_be_json_objects() {
    let h = harness().await;
    let app = app!(h);
    let w = world(&app).await;
    let t = &w.tenant;
    let routes: Vec<(Method, String)> = vec![
        (POST, "/api/v1/tenants".into()),
        (PATCH, format!("/api/v1/tenants/{t}")),
        (POST, format!("/api/v1/tenants/{t}/move")),
        (PUT, format!("/api/v1/tenants/{t}/config/k")),
        (POST, format!("/api/v1/tenants/{t}/permissions")),
        (
            PATCH,
            format!("/api/v1/tenants/{t}/permissions/{}", w.policy),
        ),
        (POST, format!("/api/v1/tenants/{t}/consent")),
        (POST, "/api/v1/webhooks".into()),
        (PATCH, format!("/api/v1/webhooks/{}", w.webhook)),
        (POST, "/api/v1/api-keys".into()),
        (POST, "/api/v1/maintenance/rotate-encryption-key".into()),
    ];
    let bodies = [
        "[]",
        r#"["name","slug"]"#,
        "[null,null]",
        r#"["Acme","acme2",null,null]"#,
        "null",
        "1",
        r#""text""#,
        "true",
    ];
    let mut n = 0;
    for (method, path) in &routes {
        for body in bodies {
            let r = call_raw(
                &app,
                method.clone(),
                path,
                ADMIN,
                "application/json",
                body.as_bytes().to_vec(),
            )
            .await;
            assert_400(&r, None, &format!("{method} {path} {body}"));
            n += 1;
        }
    }
    // Nothing happened: no key minted, no tenant created, nothing changed.
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM api_keys").await,
        0
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM tenants").await,
        1
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM config_entries").await,
        0
    );
    let tenant = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(tenant.body["name"], "Acme");
    eprintln!("hostile cases: {n}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_null_for_a_field_that_cannot_be_null_is_a_400() {
    let h = harness().await;
    let app = app!(h);
    let w = world(&app).await;
    let t = &w.tenant;
    let hook = format!("/api/v1/webhooks/{}", w.webhook);
    let policy = format!("/api/v1/tenants/{t}/permissions/{}", w.policy);
    let cases: Vec<(Method, String, Value, &str)> = vec![
        (PATCH, hook.clone(), json!({"url": null}), "url"),
        (PATCH, hook.clone(), json!({"events": null}), "events"),
        (PATCH, hook.clone(), json!({"secret": null}), "secret"),
        (PATCH, hook.clone(), json!({"active": null}), "active"),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"name": null}),
            "name",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"slug": null}),
            "slug",
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{t}"),
            json!({"metadata": null}),
            "metadata",
        ),
        (
            PUT,
            format!("/api/v1/tenants/{t}/config/k"),
            json!({"value": 1, "locked": null}),
            "locked",
        ),
        (
            PUT,
            format!("/api/v1/tenants/{t}/config/k"),
            json!({"value": 1, "sensitive": null}),
            "sensitive",
        ),
        (PATCH, policy.clone(), json!({"value": null}), "value"),
        (PATCH, policy.clone(), json!({"mode": null}), "mode"),
    ];
    let n = cases.len();
    for (method, path, body, field) in cases {
        let r = call(&app, method.clone(), &path, Some(ADMIN), Some(body.clone())).await;
        assert_400(&r, Some(field), &format!("{method} {path} {body}"));
    }
    // A field that may be null still may: clearing the description works.
    let r = call(
        &app,
        PATCH,
        &hook,
        Some(ADMIN),
        Some(json!({"description": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    eprintln!("hostile cases: {n}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invented_methods_and_paths_add_no_metrics_series() {
    let h = harness().await;
    let app = app!(h);
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("stratum_http_"))
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_owned())
            .collect()
    };
    let invent = |i: usize| -> (Method, String) {
        let m = Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        (m, format!("/nowhere/{i}/{}", "x".repeat(i % 50)))
    };
    let send = |m: Method, p: String, key: bool| {
        let mut req = TestRequest::default().method(m).uri(&p);
        if key {
            req = req.insert_header(("X-API-Key", ADMIN));
        }
        req.to_request()
    };
    // Warm up every label the invented requests can reach.
    for i in 0..4 {
        let (m, p) = invent(i);
        for key in [false, true] {
            let _ = actix_web::test::call_service(&app, send(m.clone(), p.clone(), key)).await;
            let _ =
                actix_web::test::call_service(&app, send(m.clone(), format!("/api/v1{p}"), key))
                    .await;
            let _ =
                actix_web::test::call_service(&app, send(m.clone(), "/api/v1/tenants".into(), key))
                    .await;
            let _ = actix_web::test::call_service(&app, send(GET, p.clone(), key)).await;
        }
    }
    // The scrape is a request too: scrape once so that its own series exist.
    let _ = call_text(&app, "/metrics").await;
    let before = call_text(&app, "/metrics").await;
    let mut n = 0;
    for i in 4..304 {
        let (m, p) = invent(i);
        for key in [false, true] {
            for path in [p.clone(), format!("/api/v1{p}"), "/api/v1/tenants".into()] {
                let res =
                    actix_web::test::call_service(&app, send(m.clone(), path.clone(), key)).await;
                assert!(
                    res.status().is_client_error(),
                    "{m} {path}: {}",
                    res.status()
                );
                n += 1;
            }
        }
    }
    let after = call_text(&app, "/metrics").await;
    assert_eq!(
        series(&before),
        series(&after),
        "no request may add a time series"
    );
    assert!(!after.contains("M100X") && !after.contains("/nowhere"));
    assert!(after.contains("method=\"other\""));
    eprintln!("hostile cases: {n}");
}

async fn call_text<S: TestApp<B>, B: actix_web::body::MessageBody>(app: &S, path: &str) -> String {
    let res = actix_web::test::call_service(app, TestRequest::get().uri(path).to_request()).await;
    String::from_utf8(actix_web::test::read_body(res).await.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tree_is_at_most_32_levels_deep() {
    let h = harness().await;
    let app = app!(h);
    let root = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "L0", "slug": "l0"})),
    )
    .await;
    let mut parent = id(&root.body);
    for depth in 1..=32 {
        let r = call(
            &app,
            POST,
            "/api/v1/tenants",
            Some(ADMIN),
            Some(json!({"name": format!("L{depth}"), "slug": format!("l{depth}"), "parent_id": parent})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "depth {depth}: {}", r.body);
        assert_eq!(r.body["depth"], depth);
        parent = id(&r.body);
    }
    let too_deep = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "L33", "slug": "l33", "parent_id": parent})),
    )
    .await;
    assert_400(&too_deep, Some("parent_id"), "depth 33");
    // Moving a two-level subtree under the deepest tenant would put its leaf at 34.
    let a = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let b = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "B", "slug": "b", "parent_id": id(&a.body)})),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED);
    let moved = call(
        &app,
        POST,
        &format!("/api/v1/tenants/{}/move", id(&a.body)),
        Some(ADMIN),
        Some(json!({"new_parent_id": parent})),
    )
    .await;
    assert_400(&moved, Some("new_parent_id"), "move to depth 34");
    eprintln!("hostile cases: 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_per_tenant_are_capped() {
    let h = harness_with_args(|w| w.max_per_tenant = 3, |_| {}).await;
    let app = app!(h);
    let t = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let t = id(&t.body);
    let create = |tenant: Option<&str>| json!({"url": "http://127.0.0.1:9/hook", "events": ["tenant.created"], "tenant_id": tenant});
    for owner in [Some(t.as_str()), None] {
        for _ in 0..3 {
            let r = call(
                &app,
                POST,
                "/api/v1/webhooks",
                Some(ADMIN),
                Some(create(owner)),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
        let r = call(
            &app,
            POST,
            "/api/v1/webhooks",
            Some(ADMIN),
            Some(create(owner)),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert_eq!(r.code(), "CONFLICT");
    }
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM webhooks").await,
        6
    );
    eprintln!("hostile cases: 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_limited_per_client_address() {
    let h = harness_with(|s| {
        s.auth_failures =
            stratum_api::ratelimit::RateLimiter::new(stratum_api::ratelimit::RateLimitConfig {
                per_second: 0.001,
                burst: 5.0,
                limit_bootstrap: true,
            })
            .map(std::sync::Arc::new);
    })
    .await;
    let app = app!(h);
    let from = |ip: &str, key: &str| {
        TestRequest::get()
            .uri("/api/v1/tenants")
            .peer_addr(format!("{ip}:40000").parse::<SocketAddr>().unwrap())
            .insert_header(("X-API-Key", key.to_owned()))
            .to_request()
    };
    // Keys of every shape: impossible ones and well-formed unknown ones.
    let keys: Vec<String> = (0..5)
        .map(|i| {
            if i % 2 == 0 {
                format!("sk_{}", "A".repeat(43 - 1) + &i.to_string())
            } else {
                format!("guess-{i}")
            }
        })
        .collect();
    for k in &keys {
        let res = actix_web::test::call_service(&app, from("203.0.113.7", k)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = actix_web::test::call_service(&app, from("203.0.113.7", "sk_one_more")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_slice(&actix_web::test::read_body(res).await).unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    // Another address is not affected, and a good key from it works.
    let res = actix_web::test::call_service(&app, from("198.51.100.1", "sk_nope")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = actix_web::test::call_service(&app, from("198.51.100.1", ADMIN)).await;
    assert_eq!(res.status(), StatusCode::OK);
    eprintln!("hostile cases: 7");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_audit_cursor_is_answered_like_an_unknown_one() {
    let h = harness().await;
    let app = app!(h);
    let a = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let b = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await;
    let key = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"tenant_id": id(&a.body), "scopes": ["read"]})),
    )
    .await;
    let key = key.body["plaintext_key"].as_str().unwrap().to_owned();
    let entries = call(
        &app,
        GET,
        &format!("/api/v1/audit-logs?tenant_id={}", id(&b.body)),
        Some(ADMIN),
        None,
    )
    .await;
    let foreign = entries.body[0]["id"].as_str().unwrap().to_owned();
    let mine = call(&app, GET, "/api/v1/audit-logs", Some(&key), None).await;
    assert_eq!(mine.status, StatusCode::OK);
    let own = mine.body[0]["id"].as_str().unwrap().to_owned();
    let ask = |cursor: String| format!("/api/v1/audit-logs?cursor={cursor}");
    let foreign_r = call(&app, GET, &ask(foreign), Some(&key), None).await;
    let unknown_r = call(
        &app,
        GET,
        &ask("01900000-0000-7000-8000-000000000000".into()),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(
        foreign_r.status,
        StatusCode::BAD_REQUEST,
        "{}",
        foreign_r.body
    );
    assert_eq!(foreign_r.status, unknown_r.status);
    assert_eq!(foreign_r.body, unknown_r.body);
    // Its own entries still page.
    let own_r = call(&app, GET, &ask(own), Some(&key), None).await;
    assert_eq!(own_r.status, StatusCode::OK, "{}", own_r.body);
    eprintln!("hostile cases: 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_moved_carries_the_tenant_after_the_move() {
    let h = harness().await;
    let app = app!(h);
    let a = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let b = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await;
    let c = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "C", "slug": "c", "parent_id": id(&a.body)})),
    )
    .await;
    let moved = call(
        &app,
        POST,
        &format!("/api/v1/tenants/{}/move", id(&c.body)),
        Some(ADMIN),
        Some(json!({"new_parent_id": id(&b.body)})),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK);
    let texts = sql::texts(
        &h.db.url,
        "SELECT payload::text AS t FROM webhook_events WHERE event_type = 'tenant.moved'",
    )
    .await;
    let payload: Value = serde_json::from_str(&texts[0]).unwrap();
    let mut expected = moved.body.clone();
    expected["previous_parent_id"] = json!(id(&a.body));
    assert_eq!(payload, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_and_unknown_routes_carry_the_error_body() {
    let h = harness().await;
    let app = app!(h);
    let mut n = 0;
    for (ctype, body) in [
        ("application/json", "{"),
        ("application/json", "{\"name\": \"x\", }"),
        ("application/json", "\u{0}"),
        ("text/plain", "{\"name\":\"A\",\"slug\":\"a\"}"),
        (
            "application/json",
            "{\"name\":\"A\",\"slug\":\"a\",\"extra\":1}",
        ),
        (
            "application/json",
            "{\"name\":\"A\",\"slug\":\"a\",\"name\":\"B\"}",
        ),
    ] {
        let r = call_raw(
            &app,
            POST,
            "/api/v1/tenants",
            ADMIN,
            ctype,
            body.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{ctype} {body}: {}",
            r.body
        );
        assert!(r.body["error"]["code"].is_string());
        n += 1;
    }
    let big = vec![b' '; 300 * 1024];
    let r = call_raw(
        &app,
        POST,
        "/api/v1/tenants",
        ADMIN,
        "application/json",
        big,
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "PAYLOAD_TOO_LARGE");
    for (m, p) in [
        (GET, "/nope"),
        (GET, "/api/v1/nope"),
        (Method::DELETE, "/api/v1/tenants"),
    ] {
        let r = call_any(&app, m.clone(), p, Some(ADMIN), None).await;
        assert!(r.status.is_client_error(), "{m} {p}");
        assert!(r.body["error"]["code"].is_string(), "{m} {p}: {}", r.body);
        n += 1;
    }
    eprintln!("hostile cases: {}", n + 1);
}
