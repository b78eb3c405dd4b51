//! `Idempotency-Key` through the real application on real PostgreSQL: replay of the stored
//! response, reuse with another body, a repeat while the first runs, per-key scope, the
//! key and the change committing together or not at all, and a commit whose answer the
//! database's connection lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::{app, call, harness, harness_with_db, send, sql, TestApp, ADMIN, POST};
use serde_json::{json, Value};
use stratum_testkit::cutter::{CommitCutter, Cut};

struct Reply {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn post<S: TestApp<B>, B: actix_web::body::MessageBody>(
    app: &S,
    path: &str,
    api_key: &str,
    idem: Option<&str>,
    body: Value,
) -> Reply {
    let mut req = TestRequest::default()
        .method(POST)
        .uri(path)
        .insert_header(("X-API-Key", api_key))
        .set_json(body);
    if let Some(k) = idem {
        req = req.insert_header(("Idempotency-Key", k));
    }
    let r = send(app, req.to_request()).await;
    Reply {
        replayed: r
            .headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true"),
        status: r.status,
        body: r.body,
    }
}

async fn tenants_named(url: &str, slug: &str) -> i64 {
    sql::count(
        url,
        &format!("SELECT count(*) AS n FROM tenants WHERE slug = '{slug}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_replays_the_stored_response_and_changes_nothing() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.clone();
    let body = json!({"name": "A", "slug": "a"});
    let first = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("create-a"),
        body.clone(),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!first.replayed);
    let again = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("create-a"),
        body.clone(),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed, "Idempotent-Replayed: true");
    assert_eq!(again.body, first.body, "the stored body");
    assert_eq!(tenants_named(&url, "a").await, 1);
    assert_eq!(
        sql::count(
            &url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'tenant.created'"
        )
        .await,
        1
    );
    assert_eq!(
        sql::count(
            &url,
            "SELECT count(*) AS n FROM webhook_events WHERE event_type = 'tenant.created'"
        )
        .await,
        1
    );

    // Another body, another path: 422, nothing changes.
    let other = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("create-a"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
    );
    let tid = first.body["id"].as_str().unwrap();
    let other = post(
        &app,
        &format!("/api/v1/tenants/{tid}/permissions"),
        ADMIN,
        Some("create-a"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(tenants_named(&url, "b").await, 0);

    // Without a key, the same body is a new request (and here a slug conflict).
    let plain = post(&app, "/api/v1/tenants", ADMIN, None, body.clone()).await;
    assert_eq!(plain.status, StatusCode::CONFLICT);

    // A failed request stores nothing: the key stays usable.
    let bad = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("k2"),
        json!({"name": "C"}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let good = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("k2"),
        json!({"name": "C", "slug": "c"}),
    )
    .await;
    assert_eq!(good.status, StatusCode::CREATED, "{}", good.body);
    assert!(!good.replayed);

    // A POST that changes only the audit log (a test delivery) replays too.
    let w = post(
        &app,
        "/api/v1/webhooks",
        ADMIN,
        Some("hook"),
        json!({"url": "http://127.0.0.1:9/x", "events": ["tenant.created"], "secret": "a-secret-of-enough-length"}),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
    let wid = w.body["id"].as_str().unwrap().to_owned();
    let t1 = post(
        &app,
        &format!("/api/v1/webhooks/{wid}/test"),
        ADMIN,
        Some("t"),
        json!({}),
    )
    .await;
    assert_eq!(t1.status, StatusCode::OK);
    let t2 = post(
        &app,
        &format!("/api/v1/webhooks/{wid}/test"),
        ADMIN,
        Some("t"),
        json!({}),
    )
    .await;
    assert!(t2.replayed);
    assert_eq!(t1.body, t2.body);
    assert_eq!(
        sql::count(
            &url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'webhook.tested'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_scoped_per_api_key_validated_and_refused_where_a_secret_would_be_stored() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.clone();
    let other_key = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"scopes": ["write"]})),
    )
    .await;
    let other_key = other_key.body["plaintext_key"].as_str().unwrap().to_owned();

    let a = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("same"),
        json!({"name": "A", "slug": "a"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    // The same key string under another API key is another key.
    let b = post(
        &app,
        "/api/v1/tenants",
        &other_key,
        Some("same"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert!(!b.replayed);
    assert_eq!(tenants_named(&url, "b").await, 1);
    let b2 = post(
        &app,
        "/api/v1/tenants",
        &other_key,
        Some("same"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert!(b2.replayed);
    assert_eq!(b2.body["slug"], "b");

    let long = "x".repeat(256);
    for bad in ["", "has space", long.as_str()] {
        let r = post(
            &app,
            "/api/v1/tenants",
            ADMIN,
            Some(bad),
            json!({"name": "Z", "slug": "z"}),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{bad:?}"
        );
    }
    let ok = "k".repeat(255);
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some(&ok),
        json!({"name": "Z", "slug": "z"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Routes whose response holds a secret in clear refuse a key.
    let r = post(
        &app,
        "/api/v1/api-keys",
        ADMIN,
        Some("ak"),
        json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    let r = post(
        &app,
        "/api/v1/webhooks",
        ADMIN,
        Some("wh"),
        json!({"url": "http://127.0.0.1:9/x", "events": ["tenant.created"]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    assert_eq!(
        sql::count(&url, "SELECT count(*) AS n FROM webhooks").await,
        0
    );
    assert_eq!(sql::count(&url, "SELECT count(*) AS n FROM idempotency_keys WHERE response_body LIKE '%whsec_%' OR response_body LIKE '%plaintext_key%'").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_while_the_first_runs_gets_409() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.clone();
    // The first request "still runs": its transaction holds the key's lock.
    let mut holder = sql::conn(&url).await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .unwrap();
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('stratum.idempotency.' || 'bootstrap' || '.' || 'busy', 0))",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("busy"),
        json!({"name": "A", "slug": "a"}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_PROGRESS")
    );
    assert_eq!(tenants_named(&url, "a").await, 0);
    diesel::sql_query("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    drop(holder);
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("busy"),
        json!({"name": "A", "slug": "a"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Truly concurrent repeats: one tenant, and every answer is the 201 or a 409.
    let body = json!({"name": "C", "slug": "c"});
    let replies = futures_util::future::join_all(
        (0..8).map(|_| post(&app, "/api/v1/tenants", ADMIN, Some("race"), body.clone())),
    )
    .await;
    assert_eq!(tenants_named(&url, "c").await, 1);
    let created: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert!(!created.is_empty());
    assert_eq!(
        created.iter().filter(|r| !r.replayed).count(),
        1,
        "exactly one ran"
    );
    for r in &replies {
        assert!(
            r.status == StatusCode::CREATED
                || (r.status == StatusCode::CONFLICT && r.code() == "IDEMPOTENCY_KEY_IN_PROGRESS"),
            "{} {}",
            r.status,
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_and_the_change_commit_together_or_not_at_all() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.clone();
    // Storing the key fails after the change was made: the change rolls back with it.
    sql::exec(
        &url,
        "ALTER TABLE idempotency_keys ADD CONSTRAINT trip_key CHECK (key <> 'trip')",
    )
    .await;
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("trip"),
        json!({"name": "A", "slug": "a"}),
    )
    .await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    assert_eq!(
        tenants_named(&url, "a").await,
        0,
        "no change without its key"
    );
    assert_eq!(
        sql::count(
            &url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'tenant.created'"
        )
        .await,
        0
    );
    assert_eq!(
        sql::count(&url, "SELECT count(*) AS n FROM webhook_events").await,
        0
    );

    // The change fails (its audit entry cannot be written): no key is stored.
    sql::exec(
        &url,
        "ALTER TABLE audit_logs ADD CONSTRAINT trip_audit CHECK (action <> 'tenant.created')",
    )
    .await;
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("k"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert!(r.status.is_server_error());
    assert_eq!(
        sql::count(&url, "SELECT count(*) AS n FROM idempotency_keys").await,
        0,
        "no key without its change"
    );
    sql::exec(&url, "ALTER TABLE audit_logs DROP CONSTRAINT trip_audit").await;
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("k"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        sql::count(&url, "SELECT count(*) AS n FROM idempotency_keys").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_expire_after_24_hours_and_purge_removes_them() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.clone();
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("old"),
        json!({"name": "A", "slug": "a"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("fresh"),
        json!({"name": "B", "slug": "b"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    sql::exec(
        &url,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'",
    )
    .await;
    // An expired key is a new key.
    let r = post(
        &app,
        "/api/v1/tenants",
        ADMIN,
        Some("old"),
        json!({"name": "A2", "slug": "a2"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(!r.replayed);
    sql::exec(
        &url,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'",
    )
    .await;
    let purged = call(
        &app,
        POST,
        "/api/v1/maintenance/purge-expired",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    let mut fields: Vec<&String> = purged.body.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "audit_logs",
            "consent_records",
            "deleted_count",
            "deliveries",
            "events"
        ]
    );
    assert_eq!(
        sql::texts(&url, "SELECT key AS t FROM idempotency_keys ORDER BY key").await,
        vec!["fresh".to_owned()]
    );
}

/// A harness whose idempotency keys (and so every write of a request with a key, which
/// runs on the key's transaction) reach the database through a [`CommitCutter`].
async fn harness_through_cutter() -> (common::Harness, std::sync::Arc<CommitCutter>) {
    let cutter = std::sync::Arc::new(CommitCutter::start().await.unwrap());
    let c = cutter.clone();
    let h = harness_with_db(move |db, state| {
        let pool = stratum_postgres::connect(&c.url(&db.url), &Default::default()).unwrap();
        state.idempotency =
            std::sync::Arc::new(stratum_server::idempotency::PgIdempotency::new(pool));
    })
    .await;
    (h, cutter)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_request_whose_commit_answer_was_lost_but_took_effect_is_acknowledged() {
    let (h, cutter) = harness_through_cutter().await;
    let app = app!(h);
    let url = h.db.url.clone();
    cutter.arm(Cut::AfterCommit);
    let body = json!({"name": "A", "slug": "lost_answer"});
    let first = post(&app, "/api/v1/tenants", ADMIN, Some("lost"), body.clone()).await;
    // Precondition: the connection was lost at that request's COMMIT, after the server had it.
    assert!(cutter.met(), "the COMMIT was cut");
    assert_eq!(
        tenants_named(&url, "lost_answer").await,
        1,
        "the commit took effect"
    );
    // So the request is acknowledged, not refused as if nothing had changed ...
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["slug"], "lost_answer");
    // ... and a repeat replays that very response.
    let again = post(&app, "/api/v1/tenants", ADMIN, Some("lost"), body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(tenants_named(&url, "lost_answer").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_request_whose_commit_never_reached_the_server_is_503_and_runs_again() {
    let (h, cutter) = harness_through_cutter().await;
    let app = app!(h);
    let url = h.db.url.clone();
    cutter.arm(Cut::BeforeCommit);
    let body = json!({"name": "A", "slug": "lost_commit"});
    let first = post(&app, "/api/v1/tenants", ADMIN, Some("gone"), body.clone()).await;
    assert!(cutter.met(), "the COMMIT was cut");
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.body
    );
    assert_eq!(first.code(), "SERVICE_UNAVAILABLE");
    assert_eq!(
        tenants_named(&url, "lost_commit").await,
        0,
        "nothing changed"
    );
    // The key stayed unused: a repeat runs the request, it replays nothing.
    let again = post(&app, "/api/v1/tenants", ADMIN, Some("gone"), body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert!(!again.replayed);
    assert_eq!(tenants_named(&url, "lost_commit").await, 1);
}
