//! Concurrent writers on one resource, through the real application on real PostgreSQL:
//! no change is lost, and the audit entries of one resource form one chain (each entry's
//! before-state is exactly the committed state its change replaced). Plus `ETag`/`If-Match`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::{Method, StatusCode};
use actix_web::test::TestRequest;
use common::{app, call, harness, send, Reply, TestApp, ADMIN, DELETE, GET, PATCH, POST, PUT};
use futures_util::future::join_all;
use serde_json::{json, Value};

/// One request with an optional `If-Match`, whatever it answers.
async fn call_if<S: TestApp<B>, B: actix_web::body::MessageBody>(
    app: &S,
    method: Method,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = TestRequest::default()
        .method(method)
        .uri(path)
        .insert_header(("X-API-Key", ADMIN));
    if let Some(m) = if_match {
        req = req.insert_header(("If-Match", m));
    }
    if let Some(b) = body {
        req = req.set_json(b);
    }
    send(app, req.to_request()).await
}

/// Creates a resource with a POST as the admin; returns its id.
async fn create<S: TestApp<B>, B: actix_web::body::MessageBody>(
    app: &S,
    path: &str,
    body: Value,
) -> String {
    let r = call(app, POST, path, Some(ADMIN), Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "POST {path}: {}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

fn etag(r: &Reply) -> String {
    r.headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag on {}: {}", r.status, r.body))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every audit entry of one resource and action, through the API.
async fn entries<S: TestApp<B>, B: actix_web::body::MessageBody>(
    app: &S,
    resource_type: &str,
    resource_id: &str,
    action: &str,
) -> Vec<Value> {
    let r = call(
        app,
        GET,
        &format!("/api/v1/audit-logs?resource_type={resource_type}&action={action}&limit=100"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource_id"] == resource_id)
        .cloned()
        .collect()
}

/// Follows the chain from `start`: every entry's before-state must be the after-state of
/// exactly the entry before it, no two entries may start from the same state, and every
/// entry is visited once. Returns the last after-state.
fn follow_chain(start: &Value, entries: &[Value]) -> Value {
    let befores: Vec<&Value> = entries.iter().map(|e| &e["before_state"]).collect();
    for (i, b) in befores.iter().enumerate() {
        assert!(
            !befores[..i].contains(b),
            "two audit entries replaced the same state (a lost update): {b}"
        );
    }
    let mut cur = start.clone();
    for step in 0..entries.len() {
        let next = entries
            .iter()
            .find(|e| e["before_state"] == cur)
            .unwrap_or_else(|| panic!("step {step}: no entry replaced the committed state {cur}"));
        cur = next["after_state"].clone();
    }
    cur
}

/// Keys whose values differ between two JSON objects.
fn changed_keys(before: &Value, after: &Value) -> Vec<String> {
    let (b, a) = (before.as_object().unwrap(), after.as_object().unwrap());
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_tenant_patches_form_one_chain() {
    let h = harness().await;
    let app = app!(h);
    let id = create(
        &app,
        "/api/v1/tenants",
        json!({"name": "Hot", "slug": "hot"}),
    )
    .await;
    let path = format!("/api/v1/tenants/{id}");
    const N: usize = 40;
    let replies = join_all((0..N).map(|i| {
        let body = if i % 2 == 0 {
            json!({"name": format!("name {i}")})
        } else {
            json!({"metadata": {"writer": i}})
        };
        call_if(&app, PATCH, &path, None, Some(body))
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    let created = entries(&app, "tenant", &id, "tenant.created").await;
    let updated = entries(&app, "tenant", &id, "tenant.updated").await;
    assert_eq!(updated.len(), N, "every PATCH changed something");
    let last = follow_chain(&created[0]["after_state"], &updated);
    let now = call(&app, GET, &path, Some(ADMIN), None).await;
    assert_eq!(last, now.body, "the chain ends at the committed state");
    // Each change touched only its own field: nothing it did not mean to change moved.
    for e in &updated {
        let keys = changed_keys(&e["before_state"], &e["after_state"]);
        assert!(
            keys == ["name", "updated_at"] || keys == ["metadata", "updated_at"],
            "{keys:?}"
        );
    }
    // The version is the number of committed writes.
    assert_eq!(etag(&now), format!("\"{}\"", N + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_config_puts_form_one_chain() {
    let h = harness().await;
    let app = app!(h);
    let id = create(&app, "/api/v1/tenants", json!({"name": "C", "slug": "c"})).await;
    let path = format!("/api/v1/tenants/{id}/config/plan");
    const N: usize = 30;
    let replies = join_all((0..N).map(|i| {
        call_if(
            &app,
            PUT,
            &path,
            None,
            Some(json!({"value": format!("v{i}")})),
        )
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let updated = entries(&app, "config", &format!("{id}/plan"), "config.updated").await;
    assert_eq!(updated.len(), N);
    let last = follow_chain(&Value::Null, &updated);
    let now = call(&app, GET, &path, Some(ADMIN), None).await;
    assert_eq!(now.status, StatusCode::OK);
    assert_eq!(last["value"], now.body["value"]);
    assert_eq!(etag(&now), format!("\"{N}\""));

    // Concurrent deletes of one entry: exactly one commits.
    let deletes = join_all((0..8).map(|_| call_if(&app, DELETE, &path, None, None))).await;
    let ok = deletes
        .iter()
        .filter(|r| r.status == StatusCode::NO_CONTENT)
        .count();
    assert_eq!(ok, 1);
    assert!(deletes
        .iter()
        .all(|r| r.status == StatusCode::NO_CONTENT || r.status == StatusCode::NOT_FOUND));
    let deleted = entries(&app, "config", &format!("{id}/plan"), "config.deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["before_state"], last);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_permission_and_webhook_patches_form_chains() {
    let h = harness().await;
    let app = app!(h);
    let tid = create(&app, "/api/v1/tenants", json!({"name": "P", "slug": "p"})).await;
    let pid = create(
        &app,
        &format!("/api/v1/tenants/{tid}/permissions"),
        json!({"key": "export", "value": 0, "mode": "INHERITED"}),
    )
    .await;
    let ppath = format!("/api/v1/tenants/{tid}/permissions/{pid}");
    const N: usize = 20;
    let replies = join_all((0..N).map(|i| {
        let body = if i % 2 == 0 {
            json!({"value": i + 1})
        } else if i % 4 == 1 {
            json!({"mode": "LOCKED"})
        } else {
            json!({"mode": "DELEGATED"})
        };
        call_if(&app, PATCH, &ppath, None, Some(body))
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let updated = entries(&app, "permission", &pid, "permission.updated").await;
    let created = entries(&app, "permission", &pid, "permission.created").await;
    let last = follow_chain(&created[0]["after_state"], &updated);
    let now = call(&app, GET, &ppath, Some(ADMIN), None).await;
    assert_eq!(last, now.body);

    let wid = create(
        &app,
        "/api/v1/webhooks",
        json!({"url": "https://example.com/h", "events": ["tenant.updated"]}),
    )
    .await;
    let wpath = format!("/api/v1/webhooks/{wid}");
    let replies = join_all((0..N).map(|i| {
        let body = if i % 2 == 0 {
            json!({"description": format!("d{i}")})
        } else {
            json!({"events": ["tenant.updated", "tenant.created"], "active": i % 4 == 1})
        };
        call_if(&app, PATCH, &wpath, None, Some(body))
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let updated = entries(&app, "webhook", &wid, "webhook.updated").await;
    let created = entries(&app, "webhook", &wid, "webhook.created").await;
    // A webhook's after-state also says whether the secret changed; strip it to chain.
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("secret_changed");
        }
        v
    };
    let stripped: Vec<Value> = updated
        .iter()
        .map(|e| json!({"before_state": strip(&e["before_state"]), "after_state": strip(&e["after_state"])}))
        .collect();
    let last = follow_chain(&strip(&created[0]["after_state"]), &stripped);
    let now = call(&app, GET, &wpath, Some(ADMIN), None).await;
    assert_eq!(last["description"], now.body["description"]);
    assert_eq!(last["updated_at"], now.body["updated_at"]);
    assert_eq!(last["active"], now.body["active"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_consent_grants_and_key_revokes() {
    let h = harness().await;
    let app = app!(h);
    let tid = create(&app, "/api/v1/tenants", json!({"name": "K", "slug": "k"})).await;
    let cpath = format!("/api/v1/tenants/{tid}/consent");
    const N: usize = 20;
    let replies = join_all((0..N).map(|i| {
        call_if(
            &app,
            POST,
            &cpath,
            None,
            Some(json!({"subject_id": "user-1", "purpose": "marketing", "metadata": {"n": i}})),
        )
    }))
    .await;
    for r in &replies {
        assert!(r.status.is_success(), "{}: {}", r.status, r.body);
    }
    let rid = replies[0].body["id"].as_str().unwrap().to_owned();
    assert!(replies.iter().all(|r| r.body["id"] == rid.as_str()));
    let granted = entries(&app, "consent", &rid, "consent.granted").await;
    assert_eq!(granted.len(), N);
    follow_chain(&Value::Null, &granted);

    let kid = create(&app, "/api/v1/api-keys", json!({"scopes": ["read"]})).await;
    let kpath = format!("/api/v1/api-keys/{kid}");
    let revokes = join_all((0..8).map(|_| call_if(&app, DELETE, &kpath, None, None))).await;
    assert_eq!(
        revokes
            .iter()
            .filter(|r| r.status == StatusCode::NO_CONTENT)
            .count(),
        1
    );
    let revoked = entries(&app, "api_key", &kid, "api_key.revoked").await;
    let created = entries(&app, "api_key", &kid, "api_key.created").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["before_state"], created[0]["after_state"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_guards_every_versioned_resource() {
    let h = harness().await;
    let app = app!(h);
    let tid = create(&app, "/api/v1/tenants", json!({"name": "E", "slug": "e"})).await;
    let tpath = format!("/api/v1/tenants/{tid}");
    let got = call_if(&app, GET, &tpath, None, None).await;
    let v1 = etag(&got);
    let ok = call_if(&app, PATCH, &tpath, Some(&v1), Some(json!({"name": "E2"}))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let v2 = etag(&ok);
    assert_ne!(v1, v2);
    for stale in [v1.as_str(), "\"999\"", "W/\"2\"", "garbage"] {
        let r = call_if(
            &app,
            PATCH,
            &tpath,
            Some(stale),
            Some(json!({"name": "lost"})),
        )
        .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (StatusCode::PRECONDITION_FAILED, Some("PRECONDITION_FAILED")),
            "If-Match {stale}"
        );
    }
    let r = call_if(&app, DELETE, &tpath, Some(&v1), None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let parent = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "Q", "slug": "q"})),
    )
    .await;
    let r = call_if(
        &app,
        POST,
        &format!("{tpath}/move"),
        Some(&v1),
        Some(json!({"new_parent_id": parent.body["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // Nothing changed, and nothing was journaled, by the refused requests.
    let now = call_if(&app, GET, &tpath, None, None).await;
    assert_eq!(
        (now.body["name"].as_str(), etag(&now)),
        (Some("E2"), v2.clone())
    );
    assert!(now.body["parent_id"].is_null());
    assert_eq!(
        entries(&app, "tenant", &tid, "tenant.updated").await.len(),
        1
    );
    let star = call_if(&app, PATCH, &tpath, Some("*"), Some(json!({"name": "E3"}))).await;
    assert_eq!(star.status, StatusCode::OK);

    // Config: GET of the tenant's own entry carries the ETag; PUT and DELETE check it.
    let cpath = format!("{tpath}/config/limit");
    assert_eq!(
        call_if(&app, GET, &cpath, None, None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = call_if(&app, PUT, &cpath, Some("\"1\""), Some(json!({"value": 1}))).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "no entry yet");
    let put = call_if(&app, PUT, &cpath, None, Some(json!({"value": 1}))).await;
    let c1 = etag(&put);
    let got = call_if(&app, GET, &cpath, None, None).await;
    assert_eq!(
        (etag(&got), got.body["value"].clone()),
        (c1.clone(), json!(1))
    );
    let put2 = call_if(&app, PUT, &cpath, Some(&c1), Some(json!({"value": 2}))).await;
    assert_eq!(put2.status, StatusCode::OK);
    let r = call_if(&app, PUT, &cpath, Some(&c1), Some(json!({"value": 3}))).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call_if(&app, DELETE, &cpath, Some(&c1), None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let got = call_if(&app, GET, &cpath, None, None).await;
    assert_eq!(got.body["value"], 2);
    let r = call_if(&app, DELETE, &cpath, Some(&etag(&put2)), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Permissions.
    let p = call(
        &app,
        POST,
        &format!("{tpath}/permissions"),
        Some(ADMIN),
        Some(json!({"key": "seats", "value": 5, "mode": "LOCKED"})),
    )
    .await;
    let ppath = format!("{tpath}/permissions/{}", p.body["id"].as_str().unwrap());
    let got = call_if(&app, GET, &ppath, None, None).await;
    assert_eq!(got.body, p.body);
    let p1 = etag(&got);
    let r = call_if(&app, PATCH, &ppath, Some(&p1), Some(json!({"value": 6}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call_if(&app, PATCH, &ppath, Some(&p1), Some(json!({"value": 7}))).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call_if(&app, DELETE, &ppath, Some(&p1), None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        call_if(&app, GET, &ppath, None, None).await.body["value"],
        6
    );

    // Webhooks.
    let w = call(
        &app,
        POST,
        "/api/v1/webhooks",
        Some(ADMIN),
        Some(json!({"url": "https://example.com/e", "events": ["tenant.created"]})),
    )
    .await;
    let wpath = format!("/api/v1/webhooks/{}", w.body["id"].as_str().unwrap());
    let w1 = etag(&call_if(&app, GET, &wpath, None, None).await);
    let r = call_if(
        &app,
        PATCH,
        &wpath,
        Some(&w1),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call_if(
        &app,
        PATCH,
        &wpath,
        Some(&w1),
        Some(json!({"active": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call_if(&app, DELETE, &wpath, Some(&w1), None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        call_if(&app, GET, &wpath, None, None).await.body["active"],
        false
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_patches_and_an_archive_commit_in_one_order() {
    let h = harness().await;
    let app = app!(h);
    let id = create(
        &app,
        "/api/v1/tenants",
        json!({"name": "Arc", "slug": "arc"}),
    )
    .await;
    let path = format!("/api/v1/tenants/{id}");
    const N: usize = 24;
    let replies = join_all((0..=N).map(|i| {
        if i == N / 2 {
            call_if(&app, DELETE, &path, None, None)
        } else {
            call_if(
                &app,
                PATCH,
                &path,
                None,
                Some(json!({"name": format!("n{i}")})),
            )
        }
    }))
    .await;
    assert_eq!(
        replies[N / 2].status,
        StatusCode::NO_CONTENT,
        "{}",
        replies[N / 2].body
    );
    let patches: Vec<&Reply> = replies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != N / 2)
        .map(|(_, r)| r)
        .collect();
    // A PATCH either committed before the archive or found the tenant gone.
    for r in &patches {
        assert!(
            r.status == StatusCode::OK
                || (r.status == StatusCode::NOT_FOUND
                    && r.body["error"]["code"] == "TENANT_NOT_FOUND"),
            "{} {}",
            r.status,
            r.body
        );
    }
    let ok = patches
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let created = entries(&app, "tenant", &id, "tenant.created").await;
    let updated = entries(&app, "tenant", &id, "tenant.updated").await;
    let deleted = entries(&app, "tenant", &id, "tenant.deleted").await;
    assert_eq!(
        updated.len(),
        ok,
        "one entry per committed PATCH, none for a refused one"
    );
    assert_eq!(deleted.len(), 1);
    // The archive replaced exactly the state the last committed PATCH left.
    let last = follow_chain(&created[0]["after_state"], &updated);
    assert_eq!(deleted[0]["before_state"], last);
    let now = call(&app, GET, &path, Some(ADMIN), None).await;
    assert_eq!(now.body["status"], "archived");
    assert_eq!(now.body["name"], last["name"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_moves_of_one_tenant_form_one_chain() {
    let h = harness().await;
    let app = app!(h);
    let mut parents = Vec::new();
    for i in 0..4 {
        let p = call(
            &app,
            POST,
            "/api/v1/tenants",
            Some(ADMIN),
            Some(json!({"name": format!("P{i}"), "slug": format!("p{i}")})),
        )
        .await;
        parents.push(p.body["id"].as_str().unwrap().to_owned());
    }
    let c = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "C", "slug": "c", "parent_id": parents[0]})),
    )
    .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let cid = c.body["id"].as_str().unwrap().to_owned();
    let move_path = format!("/api/v1/tenants/{cid}/move");
    let replies = join_all((0..12).map(|i| {
        call_if(
            &app,
            POST,
            &move_path,
            None,
            Some(json!({"new_parent_id": parents[1 + i % 3]})),
        )
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let created = entries(&app, "tenant", &cid, "tenant.created").await;
    let moved = entries(&app, "tenant", &cid, "tenant.moved").await;
    assert!(!moved.is_empty());
    let last = follow_chain(&created[0]["after_state"], &moved);
    let now = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{cid}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(last, now.body, "the chain ends at the committed state");
    let parent = now.body["parent_id"].as_str().unwrap();
    assert_eq!(
        now.body["ancestry_path"],
        format!("/{parent}/{cid}/"),
        "the path follows the last move"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deletes_of_a_permission_and_a_webhook_commit_once() {
    let h = harness().await;
    let app = app!(h);
    let tid = create(&app, "/api/v1/tenants", json!({"name": "D", "slug": "d"})).await;
    let pid = create(
        &app,
        &format!("/api/v1/tenants/{tid}/permissions"),
        json!({"key": "export", "value": 1, "mode": "INHERITED"}),
    )
    .await;
    let wid = create(
        &app,
        "/api/v1/webhooks",
        json!({"url": "https://example.com/h", "events": ["tenant.updated"]}),
    )
    .await;
    for (path, resource, id, action) in [
        (
            format!("/api/v1/tenants/{tid}/permissions/{pid}"),
            "permission",
            &pid,
            "permission.deleted",
        ),
        (
            format!("/api/v1/webhooks/{wid}"),
            "webhook",
            &wid,
            "webhook.deleted",
        ),
    ] {
        let replies = join_all((0..8).map(|_| call_if(&app, DELETE, &path, None, None))).await;
        let ok = replies
            .iter()
            .filter(|r| r.status == StatusCode::NO_CONTENT)
            .count();
        assert_eq!(ok, 1, "{path}: exactly one delete commits");
        assert!(
            replies
                .iter()
                .all(|r| r.status == StatusCode::NO_CONTENT || r.status == StatusCode::NOT_FOUND),
            "{path}: the others find it gone"
        );
        assert_eq!(
            entries(&app, resource, id, action).await.len(),
            1,
            "{action}"
        );
        assert_eq!(
            call(&app, GET, &path, Some(ADMIN), None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}
