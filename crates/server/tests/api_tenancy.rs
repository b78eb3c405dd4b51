//! The event sources and the audit log through the real application on real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::{Method, StatusCode};
use common::{
    app, call, call_any, call_raw, harness, id, sql, ADMIN, DELETE, GET, PATCH, POST, PUT,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_scopes() {
    let h = harness().await;
    let app = app!(h);
    assert_eq!(
        call(&app, GET, "/api/v1/tenants", None, None).await.code(),
        "UNAUTHORIZED"
    );
    assert_eq!(
        call(&app, GET, "/api/v1/tenants", Some("sk_nope"), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // 401 comes before any validation of the request.
    assert_eq!(
        call(&app, GET, "/api/v1/tenants/not-a-uuid", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let read = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    assert_eq!(read.status, StatusCode::CREATED);
    let read_key = read.body["plaintext_key"].as_str().unwrap().to_owned();
    assert!(read.body.get("key_hash").is_none());
    assert_eq!(
        call(&app, GET, "/api/v1/tenants", Some(&read_key), None)
            .await
            .status,
        StatusCode::OK
    );
    let denied = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(&read_key),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    assert_eq!(
        (denied.status, denied.code()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        denied.body["error"]["message"], "this key lacks the 'write' scope",
        "{}",
        denied.body
    );
    // The services decide: every mutation a read key attempts is refused the same way.
    for (method, path, body) in [
        (
            POST,
            "/api/v1/webhooks".to_owned(),
            json!({"url": "https://example.com/hook", "events": ["tenant.created"]}),
        ),
        (
            POST,
            "/api/v1/webhooks/deliveries/retry-all".to_owned(),
            json!({}),
        ),
    ] {
        let r = call(&app, method.clone(), &path, Some(&read_key), Some(body)).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "FORBIDDEN"),
            "{method} {path}: {}",
            r.body
        );
    }

    // Bearer works too.
    let req = actix_web::test::TestRequest::get()
        .uri("/api/v1/tenants")
        .insert_header(("Authorization", format!("Bearer {read_key}")))
        .to_request();
    assert_eq!(
        actix_web::test::call_service(&app, req).await.status(),
        StatusCode::OK
    );

    // Only the digest is stored.
    let stored = sql::count(
        &h.db.url,
        &format!(
            "SELECT count(*) AS n FROM api_keys WHERE key_hash = '{}'",
            stratum_crypto::sha256_hex(read_key.as_bytes())
        ),
    )
    .await;
    assert_eq!(stored, 1);
    let plain = sql::count(&h.db.url, &format!("SELECT count(*) AS n FROM api_keys WHERE key_hash = '{read_key}' OR key_prefix = '{read_key}'")).await;
    assert_eq!(plain, 0);

    // Revoked keys stop working at once.
    let rid = id(&read.body);
    assert_eq!(
        call(
            &app,
            DELETE,
            &format!("/api/v1/api-keys/{rid}"),
            Some(ADMIN),
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, GET, "/api/v1/tenants", Some(&read_key), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &app,
            DELETE,
            &format!("/api/v1/api-keys/{rid}"),
            Some(ADMIN),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_tree_lifecycle() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let a = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A", "slug": "a", "metadata": {"tier": "gold"}})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a_id = id(&a.body);
    let b = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await
    .body;
    let c = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "C", "slug": "c", "parent_id": a_id})),
    )
    .await
    .body;
    let d = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "D", "slug": "d", "parent_id": id(&c)})),
    )
    .await
    .body;
    assert_eq!(d["depth"], 2);
    assert_eq!(
        d["ancestry_path"],
        format!("/{a_id}/{}/{}/", id(&c), id(&d))
    );

    let dup = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "X", "slug": "a"})),
    )
    .await;
    assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "CONFLICT"));
    let bad = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "X", "slug": "Bad-Slug"})),
    )
    .await;
    assert_eq!(bad.code(), "VALIDATION_ERROR");
    assert_eq!(bad.body["error"]["details"][0]["field"], "slug");

    let kids = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{a_id}/children"),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(kids.as_array().unwrap().len(), 1);
    let anc = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{}/ancestors", id(&d)),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(
        anc.as_array().unwrap().iter().map(id).collect::<Vec<_>>(),
        vec![a_id.clone(), id(&c)]
    );
    let desc = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{a_id}/descendants"),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(desc.as_array().unwrap().len(), 2);

    // Moving C (with D) under B rewrites the whole subtree.
    let cycle = call(
        &app,
        POST,
        &format!("/api/v1/tenants/{a_id}/move"),
        k,
        Some(json!({"new_parent_id": id(&d)})),
    )
    .await;
    assert_eq!(
        (cycle.status, cycle.code()),
        (StatusCode::CONFLICT, "CYCLE_DETECTED")
    );
    let moved = call(
        &app,
        POST,
        &format!("/api/v1/tenants/{}/move", id(&c)),
        k,
        Some(json!({"new_parent_id": id(&b)})),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(moved.body["parent_id"], id(&b));
    let d2 = call(&app, GET, &format!("/api/v1/tenants/{}", id(&d)), k, None)
        .await
        .body;
    assert_eq!(
        d2["ancestry_path"],
        format!("/{}/{}/{}/", id(&b), id(&c), id(&d))
    );
    assert_eq!(d2["depth"], 2);

    let has_children = call(
        &app,
        DELETE,
        &format!("/api/v1/tenants/{}", id(&b)),
        k,
        None,
    )
    .await;
    assert_eq!(
        (has_children.status, has_children.code()),
        (StatusCode::CONFLICT, "HAS_CHILDREN")
    );
    assert_eq!(
        call(
            &app,
            DELETE,
            &format!("/api/v1/tenants/{}", id(&d)),
            k,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let archived = call(&app, GET, &format!("/api/v1/tenants/{}", id(&d)), k, None)
        .await
        .body;
    assert_eq!(archived["status"], "archived");
    assert!(archived["deleted_at"].is_string());
    let gone = call(
        &app,
        PATCH,
        &format!("/api/v1/tenants/{}", id(&d)),
        k,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(gone.code(), "TENANT_NOT_FOUND");

    let patched = call(
        &app,
        PATCH,
        &format!("/api/v1/tenants/{a_id}"),
        k,
        Some(json!({"name": "A2"})),
    )
    .await;
    assert_eq!(patched.body["name"], "A2");

    // Every mutation wrote one audit entry and the evented ones one event each.
    let actions = sql::texts(
        &h.db.url,
        "SELECT action AS t FROM audit_logs ORDER BY created_at, id",
    )
    .await;
    assert_eq!(
        actions,
        vec![
            "tenant.created",
            "tenant.created",
            "tenant.created",
            "tenant.created",
            "tenant.moved",
            "tenant.deleted",
            "tenant.updated"
        ]
    );
    let events = sql::count(&h.db.url, "SELECT count(*) AS n FROM webhook_events").await;
    assert_eq!(events, 7);

    // Pages of tenants.
    let p1 = call(&app, GET, "/api/v1/tenants?limit=2", k, None)
        .await
        .body;
    assert_eq!(p1["data"].as_array().unwrap().len(), 2);
    assert_eq!(p1["has_more"], true);
    let p2 = call(
        &app,
        GET,
        &format!(
            "/api/v1/tenants?limit=2&cursor={}",
            p1["next_cursor"].as_str().unwrap()
        ),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(p2["data"].as_array().unwrap().len(), 1);
    assert_eq!(p2["has_more"], false);
    assert!(p2["next_cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_inherits_locks_and_encrypts() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let root = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "R", "slug": "r"})),
    )
    .await
    .body);
    let leaf = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "L", "slug": "l", "parent_id": root})),
    )
    .await
    .body);
    let put = |t: &str, key: &str| format!("/api/v1/tenants/{t}/config/{key}");
    assert_eq!(
        call(
            &app,
            PUT,
            &put(&root, "theme"),
            k,
            Some(json!({"value": "dark"}))
        )
        .await
        .status,
        StatusCode::OK
    );
    call(
        &app,
        PUT,
        &put(&leaf, "theme"),
        k,
        Some(json!({"value": "light"})),
    )
    .await;
    call(
        &app,
        PUT,
        &put(&root, "quota"),
        k,
        Some(json!({"value": 10, "locked": true})),
    )
    .await;
    let locked = call(
        &app,
        PUT,
        &put(&leaf, "quota"),
        k,
        Some(json!({"value": 99})),
    )
    .await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::CONFLICT, "CONFIG_LOCKED")
    );
    let s = call(
        &app,
        PUT,
        &put(&root, "api_token"),
        k,
        Some(json!({"value": "tok-SECRET-123", "sensitive": true})),
    )
    .await;
    assert_eq!(s.body["value"], "tok-SECRET-123");

    let resolved = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{leaf}/config"),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(resolved["theme"]["value"], "light");
    assert_eq!(resolved["theme"]["inherited"], false);
    assert_eq!(resolved["quota"]["value"], 10);
    assert_eq!(resolved["quota"]["inherited"], true);
    assert_eq!(resolved["quota"]["locked"], true);
    assert_eq!(resolved["quota"]["source_tenant_id"], root);
    assert_eq!(resolved["api_token"]["value"], "tok-SECRET-123");
    assert_eq!(resolved["api_token"]["sensitive"], true);

    // At rest, in the audit log and in events the secret never appears in clear.
    let leaks = sql::count(
        &h.db.url,
        "SELECT (SELECT count(*) FROM config_entries WHERE encrypted_value LIKE '%tok-SECRET%' OR value::text LIKE '%tok-SECRET%')
              + (SELECT count(*) FROM audit_logs WHERE after_state::text LIKE '%tok-SECRET%' OR before_state::text LIKE '%tok-SECRET%')
              + (SELECT count(*) FROM webhook_events WHERE payload::text LIKE '%tok-SECRET%') AS n",
    )
    .await;
    assert_eq!(leaks, 0);
    let enc = sql::texts(
        &h.db.url,
        "SELECT encrypted_value AS t FROM config_entries WHERE key = 'api_token'",
    )
    .await;
    assert!(enc[0].starts_with("v1:"));

    assert_eq!(
        call(&app, DELETE, &put(&leaf, "quota"), k, None)
            .await
            .code(),
        "NOT_FOUND"
    );
    assert_eq!(
        call(&app, DELETE, &put(&leaf, "theme"), k, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let resolved = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{leaf}/config"),
        k,
        None,
    )
    .await
    .body;
    assert_eq!(resolved["theme"]["value"], "dark");
    let deleted = sql::count(
        &h.db.url,
        "SELECT count(*) AS n FROM webhook_events WHERE event_type = 'config.deleted'",
    )
    .await;
    assert_eq!(deleted, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_crud() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let t = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "T", "slug": "t"})),
    )
    .await
    .body);
    let base = format!("/api/v1/tenants/{t}/permissions");
    let bad = call(
        &app,
        POST,
        &base,
        k,
        Some(json!({"key": "billing.read", "value": true, "mode": "SOMETIMES"})),
    )
    .await;
    assert_eq!(bad.body["error"]["details"][0]["field"], "mode");
    let p = call(
        &app,
        POST,
        &base,
        k,
        Some(json!({"key": "billing.read", "value": true, "mode": "LOCKED"})),
    )
    .await;
    assert_eq!(p.status, StatusCode::CREATED);
    let dup = call(
        &app,
        POST,
        &base,
        k,
        Some(json!({"key": "billing.read", "value": false, "mode": "LOCKED"})),
    )
    .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let pid = id(&p.body);
    let up = call(
        &app,
        PATCH,
        &format!("{base}/{pid}"),
        k,
        Some(json!({"mode": "DELEGATED"})),
    )
    .await;
    assert_eq!(up.body["mode"], "DELEGATED");
    assert_eq!(
        call(&app, GET, &base, k, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(&app, DELETE, &format!("{base}/{pid}"), k, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, DELETE, &format!("{base}/{pid}"), k, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let kinds = sql::texts(&h.db.url, "SELECT event_type AS t FROM webhook_events WHERE event_type LIKE 'permission.%' ORDER BY created_at, id").await;
    assert_eq!(
        kinds,
        vec![
            "permission.created",
            "permission.updated",
            "permission.deleted"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_key_never_sees_another_tenant() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let a = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await
    .body);
    let a_child = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A1", "slug": "a1", "parent_id": a})),
    )
    .await
    .body);
    let b = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await
    .body);
    call(
        &app,
        PUT,
        &format!("/api/v1/tenants/{b}/config/x"),
        k,
        Some(json!({"value": 1})),
    )
    .await;
    let bp = id(&call(
        &app,
        POST,
        &format!("/api/v1/tenants/{b}/permissions"),
        k,
        Some(json!({"key": "p", "value": 1, "mode": "LOCKED"})),
    )
    .await
    .body);
    let b_audit = sql::texts(
        &h.db.url,
        &format!("SELECT id::text AS t FROM audit_logs WHERE tenant_id = '{b}' LIMIT 1"),
    )
    .await
    .remove(0);
    let key = call(
        &app,
        POST,
        "/api/v1/api-keys",
        k,
        Some(json!({"tenant_id": a, "scopes": ["admin"]})),
    )
    .await
    .body;
    let sk = key["plaintext_key"].as_str().unwrap().to_owned();
    let s = Some(sk.as_str());

    let matrix: Vec<(Method, String, Option<Value>)> = vec![
        (GET, format!("/api/v1/tenants/{b}"), None),
        (
            PATCH,
            format!("/api/v1/tenants/{b}"),
            Some(json!({"name": "pwned"})),
        ),
        (DELETE, format!("/api/v1/tenants/{b}"), None),
        (
            POST,
            format!("/api/v1/tenants/{b}/move"),
            Some(json!({"new_parent_id": a})),
        ),
        (
            POST,
            format!("/api/v1/tenants/{a_child}/move"),
            Some(json!({"new_parent_id": b})),
        ),
        (
            POST,
            "/api/v1/tenants".into(),
            Some(json!({"name": "x", "slug": "x", "parent_id": b})),
        ),
        (GET, format!("/api/v1/tenants/{b}/children"), None),
        (GET, format!("/api/v1/tenants/{b}/ancestors"), None),
        (GET, format!("/api/v1/tenants/{b}/descendants"), None),
        (GET, format!("/api/v1/tenants/{b}/config"), None),
        (
            PUT,
            format!("/api/v1/tenants/{b}/config/x"),
            Some(json!({"value": 2})),
        ),
        (DELETE, format!("/api/v1/tenants/{b}/config/x"), None),
        (GET, format!("/api/v1/tenants/{b}/permissions"), None),
        (
            POST,
            format!("/api/v1/tenants/{b}/permissions"),
            Some(json!({"key": "q", "value": 1, "mode": "LOCKED"})),
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{b}/permissions/{bp}"),
            Some(json!({"value": 2})),
        ),
        (
            DELETE,
            format!("/api/v1/tenants/{b}/permissions/{bp}"),
            None,
        ),
        (
            PATCH,
            format!("/api/v1/tenants/{a}/permissions/{bp}"),
            Some(json!({"value": 2})),
        ),
        (GET, format!("/api/v1/audit-logs/{b_audit}"), None),
        (GET, format!("/api/v1/audit-logs?tenant_id={b}"), None),
    ];
    for (method, path, body) in matrix {
        let r = call(&app, method.clone(), &path, s, body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path} answered {}: {}",
            r.status,
            r.body
        );
        assert!(
            r.code().ends_with("NOT_FOUND"),
            "{method} {path}: {}",
            r.body
        );
    }
    // Global-only routes are 403 for a scoped key, even with admin.
    for (method, path) in [(GET, "/api/v1/api-keys"), (POST, "/api/v1/api-keys")] {
        let r = call(&app, method, path, s, Some(json!({}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    // Creating a root is refused; lists filter silently.
    let root = call(
        &app,
        POST,
        "/api/v1/tenants",
        s,
        Some(json!({"name": "x", "slug": "rootx"})),
    )
    .await;
    assert_eq!(root.status, StatusCode::FORBIDDEN);
    let listed = call(&app, GET, "/api/v1/tenants", s, None).await.body;
    let ids: Vec<String> = listed["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, vec![a.clone(), a_child.clone()]);
    let audit = call(&app, GET, "/api/v1/audit-logs?limit=100", s, None)
        .await
        .body;
    assert!(!audit.as_array().unwrap().is_empty());
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["tenant_id"] == a.as_str() || e["tenant_id"] == a_child.as_str()));
    // Nothing of B changed.
    let b_now = call(&app, GET, &format!("/api/v1/tenants/{b}"), k, None)
        .await
        .body;
    assert_eq!(b_now["name"], "B");
    assert_eq!(b_now["status"], "active");
    // Inside its subtree the key works.
    let own = call(
        &app,
        PATCH,
        &format!("/api/v1/tenants/{a_child}"),
        s,
        Some(json!({"name": "A1b"})),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400_with_the_error_body() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let cases: Vec<(Method, &str, Option<Value>)> = vec![
        (GET, "/api/v1/tenants/123", None),
        (GET, "/api/v1/tenants?cursor=nope", None),
        (GET, "/api/v1/tenants?limit=0", None),
        (GET, "/api/v1/tenants?limit=101", None),
        (GET, "/api/v1/tenants?limit=ten", None),
        (GET, "/api/v1/audit-logs?limit=0", None),
        (GET, "/api/v1/audit-logs?limit=101", None),
        (GET, "/api/v1/audit-logs?from=yesterday", None),
        (GET, "/api/v1/audit-logs?tenant_id=xyz", None),
        (
            GET,
            "/api/v1/audit-logs?cursor=01a21bf9-f44f-7552-ac62-bccd99f133cf",
            None,
        ),
        (
            GET,
            "/api/v1/audit-logs?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            None,
        ),
        (GET, "/api/v1/audit-logs/not-a-uuid", None),
        (
            POST,
            "/api/v1/tenants",
            Some(json!({"name": 1, "slug": "x"})),
        ),
        (
            POST,
            "/api/v1/tenants",
            Some(json!({"name": "x", "slug": "x", "parent_id": "nope"})),
        ),
        (
            POST,
            "/api/v1/tenants",
            Some(json!({"name": "x", "slug": "x", "colour": "red"})),
        ),
        (POST, "/api/v1/tenants", Some(json!({"slug": "x"}))),
        (POST, "/api/v1/tenants", Some(json!([1, 2]))),
        (
            POST,
            "/api/v1/tenants",
            Some(json!({"name": "x", "slug": "x", "metadata": [1]})),
        ),
        (POST, "/api/v1/api-keys", Some(json!({"scopes": ["root"]}))),
        (POST, "/api/v1/api-keys", Some(json!({"tenant_id": 5}))),
    ];
    for (method, path, body) in cases {
        let r = call(&app, method.clone(), path, k, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(r.code(), "VALIDATION_ERROR", "{method} {path}: {}", r.body);
        assert!(r.body["error"]["message"].is_string());
    }
    let r = call_raw(
        &app,
        POST,
        "/api/v1/tenants",
        ADMIN,
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    let r = call_raw(
        &app,
        POST,
        "/api/v1/tenants",
        ADMIN,
        "text/plain",
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    let big = format!("{{\"name\":\"{}\",\"slug\":\"x\"}}", "a".repeat(300 * 1024));
    let r = call_raw(
        &app,
        POST,
        "/api/v1/tenants",
        ADMIN,
        "application/json",
        big.into_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    let r = call(&app, GET, "/api/v1/nothing-here", k, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    let r = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{}", uuid::Uuid::now_v7()),
        k,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "TENANT_NOT_FOUND")
    );
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_audit_or_event_insert_rolls_the_change_back() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let t = call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "T", "slug": "t"})),
    )
    .await
    .body;
    let tid = id(&t);

    sql::exec(
        &h.db.url,
        "ALTER TABLE audit_logs ADD CONSTRAINT trip_audit CHECK (action <> 'tenant.updated')",
    )
    .await;
    let r = call_any(
        &app,
        PATCH,
        &format!("/api/v1/tenants/{tid}"),
        k,
        Some(json!({"name": "Changed"})),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR")
    );
    assert!(
        !r.body.to_string().contains("trip_audit"),
        "5xx bodies carry no internals: {}",
        r.body
    );
    assert!(r.body["error"]["request_id"].is_string());
    let now = call(&app, GET, &format!("/api/v1/tenants/{tid}"), k, None)
        .await
        .body;
    assert_eq!(now["name"], "T");

    sql::exec(&h.db.url, "ALTER TABLE webhook_events ADD CONSTRAINT trip_event CHECK (event_type <> 'config.updated')").await;
    let r = call_any(
        &app,
        PUT,
        &format!("/api/v1/tenants/{tid}/config/k"),
        k,
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM config_entries").await,
        0
    );
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'config.updated'"
        )
        .await,
        0
    );

    sql::exec(&h.db.url, "ALTER TABLE webhook_deliveries ADD CONSTRAINT trip_delivery CHECK (event_type <> 'tenant.created')").await;
    sql::exec(&h.db.url, "INSERT INTO webhooks (id, url, events, secret_encrypted) VALUES (gen_random_uuid(), 'https://example.com/h', '{tenant.created}', 'x')").await;
    let r = call_any(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "U", "slug": "u"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM tenants WHERE slug = 'u'"
        )
        .await,
        0
    );
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM webhook_events WHERE event_type = 'tenant.created'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_fan_out_to_matching_webhooks_only() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let a = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await
    .body);
    let b = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "B", "slug": "b"})),
    )
    .await
    .body);
    let hook = |name: &str, tenant: Option<&str>, events: &str, active: bool| {
        format!(
            "INSERT INTO webhooks (id, tenant_id, url, events, secret_encrypted, active, description)
             VALUES (gen_random_uuid(), {}, 'https://example.com/{name}', '{events}', 'x', {active}, '{name}')",
            tenant.map(|t| format!("'{t}'")).unwrap_or("NULL".into())
        )
    };
    for q in [
        hook("global", None, "{tenant.created,config.updated}", true),
        hook("on_a", Some(&a), "{tenant.created}", true),
        hook("on_b", Some(&b), "{tenant.created}", true),
        hook("inactive", None, "{tenant.created}", false),
        hook("other_event", None, "{permission.deleted}", true),
    ] {
        sql::exec(&h.db.url, &q).await;
    }
    let child = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A1", "slug": "a1", "parent_id": a})),
    )
    .await
    .body);
    let got = sql::texts(
        &h.db.url,
        &format!(
            "SELECT w.description AS t FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
              WHERE d.tenant_id = '{child}' AND d.status = 'pending' ORDER BY 1"
        ),
    )
    .await;
    assert_eq!(got, vec!["global", "on_a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_cursor_walk_yields_each_entry_once() {
    let h = harness().await;
    let app = app!(h);
    sql::exec(
        &h.db.url,
        "INSERT INTO audit_logs (id, actor_id, actor_type, action, resource_type, created_at)
         SELECT gen_random_uuid(), 'system', 'system', 'bulk.test', 'test', '2026-01-01T00:00:00Z'
           FROM generate_series(1, 1000)",
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit-logs?action=bulk.test&limit=7&cursor={c}"),
            None => "/api/v1/audit-logs?action=bulk.test&limit=7".to_owned(),
        };
        let r = call(&app, GET, &path, Some(ADMIN), None).await;
        let page = r.body.as_array().unwrap().clone();
        pages += 1;
        for e in &page {
            assert!(seen.insert(id(e)), "entry returned twice");
        }
        match r.headers.get("x-next-cursor") {
            Some(c) => {
                assert_eq!(page.len(), 7);
                assert_eq!(c.to_str().unwrap(), id(page.last().unwrap()));
                cursor = Some(c.to_str().unwrap().to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(pages, 143);

    let ranged = call(&app, GET, "/api/v1/audit-logs?from=2025-12-31T23:00:00Z&to=2026-01-01T00:00:00Z&limit=100&resource_type=test&actor_id=system", Some(ADMIN), None).await;
    assert_eq!(ranged.body.as_array().unwrap().len(), 100);
    let none = call(
        &app,
        GET,
        "/api/v1/audit-logs?from=2026-01-01T00:00:01Z&action=bulk.test",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(none.body.as_array().unwrap().len(), 0);
    let one = id(&ranged.body[0]);
    let single = call(
        &app,
        GET,
        &format!("/api/v1/audit-logs/{one}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(single.body["id"], one);
}
