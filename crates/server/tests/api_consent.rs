//! Consent through the real application on real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use common::{app, call, harness, id, sql, ADMIN, DELETE, GET, POST};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn grant_regrant_list_revoke() {
    let h = harness().await;
    let app = app!(h);
    let tenant = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "Acme", "slug": "acme"})),
    )
    .await;
    let t = id(&tenant.body);
    let base = format!("/api/v1/tenants/{t}/consent");

    let first = call(
        &app,
        POST,
        &base,
        Some(ADMIN),
        Some(json!({"subject_id": "user 1@x", "purpose": "marketing", "expires_at": "2999-01-01T00:00:00+01:00", "metadata": {"source": "signup"}})),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let b = &first.body;
    assert_eq!(
        (
            b["tenant_id"].as_str(),
            b["subject_id"].as_str(),
            b["purpose"].as_str()
        ),
        (Some(t.as_str()), Some("user 1@x"), Some("marketing"))
    );
    assert_eq!(b["granted"], true);
    assert_eq!(b["revoked_at"], Value::Null);
    assert_eq!(b["expires_at"], "2998-12-31T23:00:00.000Z");
    assert_eq!(b["metadata"], json!({"source": "signup"}));
    assert_eq!(b.as_object().unwrap().len(), 11);
    let cid = id(b);

    // Granting again updates the same record.
    let again = call(
        &app,
        POST,
        &base,
        Some(ADMIN),
        Some(json!({"subject_id": "user 1@x", "purpose": "marketing"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(id(&again.body), cid);
    assert_eq!(again.body["expires_at"], Value::Null);
    assert_eq!(again.body["created_at"], first.body["created_at"]);

    let other = call(
        &app,
        POST,
        &base,
        Some(ADMIN),
        Some(json!({"subject_id": "user-2", "purpose": "analytics"})),
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED);

    let all = call(&app, GET, &base, Some(ADMIN), None).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body.as_array().unwrap().len(), 2);
    let mine = call(
        &app,
        GET,
        &format!("{base}?subject_id=user%201%40x&active=true"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1);
    assert_eq!(id(&mine.body[0]), cid);
    let bad = call(&app, GET, &format!("{base}?active=yes"), Some(ADMIN), None).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );

    // Revoke: subject_id is required; a second revoke finds nothing active.
    let missing = call(
        &app,
        DELETE,
        &format!("{base}/marketing"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    assert_eq!(missing.body["error"]["details"][0]["field"], "subject_id");
    let revoked = call(
        &app,
        DELETE,
        &format!("{base}/marketing?subject_id=user%201%40x"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body, json!({"success": true}));
    let twice = call(
        &app,
        DELETE,
        &format!("{base}/marketing?subject_id=user%201%40x"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::NOT_FOUND, "CONSENT_NOT_FOUND")
    );
    let never = call(
        &app,
        DELETE,
        &format!("{base}/marketing?subject_id=nobody"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(never.code(), "CONSENT_NOT_FOUND");

    let active = call(&app, GET, &format!("{base}?active=true"), Some(ADMIN), None).await;
    assert_eq!(active.body.as_array().unwrap().len(), 1);
    assert_eq!(active.body[0]["subject_id"], "user-2");
    let inactive = call(
        &app,
        GET,
        &format!("{base}?active=false"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(inactive.body.as_array().unwrap().len(), 1);
    assert_eq!(id(&inactive.body[0]), cid);
    assert_eq!(inactive.body[0]["granted"], false);
    assert!(inactive.body[0]["revoked_at"].is_string());

    // One audit entry per grant and revoke, none for the failures, no webhook event.
    let audit = call(
        &app,
        GET,
        "/api/v1/audit-logs?resource_type=consent",
        Some(ADMIN),
        None,
    )
    .await;
    let actions: Vec<&str> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "consent.revoked",
            "consent.granted",
            "consent.granted",
            "consent.granted"
        ]
    );
    assert_eq!(audit.body[0]["resource_id"], cid.as_str());
    assert_eq!(audit.body[0]["tenant_id"], t.as_str());
    assert_eq!(audit.body[0]["before_state"]["granted"], true);
    assert_eq!(audit.body[0]["after_state"]["granted"], false);
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM webhook_events WHERE event_type LIKE 'consent%'"
        )
        .await,
        0
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM consent_records").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_and_visibility() {
    let h = harness().await;
    let app = app!(h);
    let a = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await
    .body);
    let b = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await
    .body);
    let url = format!("/api/v1/tenants/{a}/consent");

    let ok = json!({"subject_id": "u", "purpose": "marketing"});
    let cases = [
        (
            json!({"subject_id": "u", "purpose": "marketing", "extra": 1}),
            None,
        ),
        (json!({"purpose": "marketing"}), None),
        (
            json!({"subject_id": "", "purpose": "marketing"}),
            Some("subject_id"),
        ),
        (
            json!({"subject_id": "x".repeat(256), "purpose": "marketing"}),
            Some("subject_id"),
        ),
        (
            json!({"subject_id": "u", "purpose": "Marketing!"}),
            Some("purpose"),
        ),
        (
            json!({"subject_id": "u", "purpose": "marketing", "expires_at": "2001-01-01T00:00:00Z"}),
            Some("expires_at"),
        ),
        (
            json!({"subject_id": "u", "purpose": "marketing", "expires_at": "soon"}),
            Some("expires_at"),
        ),
        (
            json!({"subject_id": "u", "purpose": "marketing", "metadata": [1]}),
            Some("metadata"),
        ),
    ];
    for (body, field) in cases {
        let r = call(&app, POST, &url, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{body}"
        );
        if let Some(f) = field {
            assert_eq!(r.body["error"]["details"][0]["field"], f, "{body}");
        }
    }
    let bad_uuid = call(&app, GET, "/api/v1/tenants/nope/consent", Some(ADMIN), None).await;
    assert_eq!(
        (bad_uuid.status, bad_uuid.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );

    // Unknown tenant: 404 on all three routes.
    let unknown = "/api/v1/tenants/01900000-0000-7000-8000-000000000000/consent";
    for (m, path, body) in [
        (POST, unknown.to_owned(), Some(ok.clone())),
        (GET, unknown.to_owned(), None),
        (DELETE, format!("{unknown}/marketing?subject_id=u"), None),
    ] {
        let r = call(&app, m, &path, Some(ADMIN), body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "TENANT_NOT_FOUND"),
            "{path}"
        );
    }

    // A key scoped to B cannot see A; a read key cannot grant.
    let scoped = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"tenant_id": b, "scopes": ["write"]})),
    )
    .await;
    let scoped_key = scoped.body["plaintext_key"].as_str().unwrap().to_owned();
    let hidden = call(&app, POST, &url, Some(&scoped_key), Some(ok.clone())).await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (StatusCode::NOT_FOUND, "TENANT_NOT_FOUND")
    );
    let own = call(
        &app,
        POST,
        &format!("/api/v1/tenants/{b}/consent"),
        Some(&scoped_key),
        Some(ok.clone()),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED);
    let read = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    let read_key = read.body["plaintext_key"].as_str().unwrap().to_owned();
    let denied = call(&app, POST, &url, Some(&read_key), Some(ok)).await;
    assert_eq!(
        (denied.status, denied.code()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        call(&app, GET, &url, Some(&read_key), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM consent_records").await,
        1
    );
}
