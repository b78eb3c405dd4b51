//! Webhook replay through the real application on real PostgreSQL: the window, the event
//! filter, the tenant audience, the order, resumption from the cursor, scoping and
//! validation. The replay worker is driven step by step here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::StatusCode;
use common::{app, call, harness, id, sql, ADMIN, GET, PATCH, POST};
use serde_json::{json, Value};
use stratum_webhooks::Replayer;

fn replayer(url: &str, batch: i64) -> Replayer {
    let pool = stratum_postgres::connect(url, &Default::default()).unwrap();
    let mut args = stratum_server::config::WebhookArgs::from_env().unwrap();
    args.replay_batch_size = batch;
    stratum_server::wiring::replayer(pool, &args)
}

/// Steps until no job can advance; returns the number of steps that did something.
async fn drain(r: &Replayer) -> usize {
    let mut steps = 0;
    while r.step().await.unwrap().is_some() {
        steps += 1;
        assert!(steps < 1000, "the replay never completes");
    }
    steps
}

/// `(event id, created_at as text)` of the events, oldest first, as the keyset orders them.
async fn events(url: &str, filter: &str) -> Vec<String> {
    sql::texts(
        url,
        &format!(
            "SELECT e.id::text AS t FROM webhook_events e WHERE {filter} ORDER BY e.created_at, e.id"
        ),
    )
    .await
}

/// Event ids of a replay's deliveries in the order the queue hands them out.
async fn replayed(url: &str, replay: &str) -> Vec<String> {
    sql::texts(
        url,
        &format!(
            "SELECT d.event_id::text AS t FROM webhook_deliveries d WHERE d.replay_id = '{replay}'
              ORDER BY d.next_retry_at, d.id"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_enqueues_the_window_in_order_with_the_filter_and_audience() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let url = h.db.url.clone();
    let t0 = call(&app, GET, "/api/v1/audit-logs?limit=1", k, None).await;
    assert_eq!(t0.status, StatusCode::OK);
    let since = sql::texts(&url, "SELECT to_char((now() - interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS t").await[0].clone();
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
    let a1 = id(&call(
        &app,
        POST,
        "/api/v1/tenants",
        k,
        Some(json!({"name": "A1", "slug": "a1", "parent_id": a})),
    )
    .await
    .body);
    for i in 0..5 {
        let r = call(
            &app,
            PATCH,
            &format!("/api/v1/tenants/{a1}"),
            k,
            Some(json!({"name": format!("A1 v{i}")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = call(
            &app,
            PATCH,
            &format!("/api/v1/tenants/{b}"),
            k,
            Some(json!({"name": format!("B v{i}")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Created after the events: it got none of them live.
    let w = call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(json!({"url": "http://127.0.0.1:9/x", "tenant_id": a, "events": ["tenant.created", "tenant.updated"]})),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
    let w = id(&w.body);
    let g = id(&call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(json!({"url": "http://127.0.0.1:9/g", "events": ["tenant.updated"]})),
    )
    .await
    .body);
    assert_eq!(
        sql::count(&url, "SELECT count(*) AS n FROM webhook_deliveries").await,
        0
    );

    // The tenant webhook: A's and A1's events of both types, not B's.
    let audience = format!(
        "e.tenant_id IN ('{a}', '{a1}') AND e.event_type IN ('tenant.created', 'tenant.updated')"
    );
    let want = events(&url, &audience).await;
    assert_eq!(want.len(), 7);
    let r = call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{w}/replay"),
        k,
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["total"], 7);
    assert_eq!(r.body["enqueued"], 0);
    assert_eq!(r.body["events"], Value::Null);
    assert_eq!(r.body["webhook_id"], w.as_str());
    let rid = id(&r.body);

    // Batches of 3: three steps enqueue 3 + 3 + 1 and the third completes the job.
    let worker = replayer(&url, 3);
    let p = worker.step().await.unwrap().unwrap();
    assert_eq!((p.enqueued, p.completed), (3, false));
    let mid = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/replays/{rid}"),
        k,
        None,
    )
    .await;
    assert_eq!(mid.status, StatusCode::OK);
    assert_eq!(
        (mid.body["status"].as_str(), mid.body["enqueued"].as_i64()),
        (Some("running"), Some(3))
    );
    assert_eq!(drain(&worker).await, 2);
    let done = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/replays/{rid}"),
        k,
        None,
    )
    .await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["enqueued"], 7);
    assert!(done.body["completed_at"].is_string());
    assert_eq!(
        replayed(&url, &rid).await,
        want,
        "every event once, oldest first"
    );
    // New deliveries (new ids), to this webhook, pending, visible through the API.
    let listed = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/deliveries?limit=100"),
        k,
        None,
    )
    .await;
    assert_eq!(listed.body.as_array().unwrap().len(), 7);
    assert!(listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "pending"));
    assert_eq!(
        sql::count(
            &url,
            &format!(
                "SELECT count(DISTINCT id) AS n FROM webhook_deliveries WHERE replay_id = '{rid}'"
            )
        )
        .await,
        7
    );

    // Narrowed by `events`; a second replay of the same window is its own job.
    let r = call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{w}/replay"),
        k,
        Some(json!({"since": since, "events": ["tenant.created"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["events"], json!(["tenant.created"]));
    let rid2 = id(&r.body);
    drain(&worker).await;
    assert_eq!(
        replayed(&url, &rid2).await,
        events(
            &url,
            &format!("e.tenant_id IN ('{a}', '{a1}') AND e.event_type = 'tenant.created'")
        )
        .await
    );

    // The window: up to (not including) the third update of A1.
    let cut = sql::texts(
        &url,
        &format!(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS t FROM webhook_events
              WHERE tenant_id = '{a1}' AND event_type = 'tenant.updated' ORDER BY created_at, id OFFSET 2 LIMIT 1"
        ),
    )
    .await[0]
        .clone();
    let r = call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{w}/replay"),
        k,
        Some(json!({"since": since, "until": cut})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let rid3 = id(&r.body);
    drain(&worker).await;
    let in_window = events(&url, &format!("{audience} AND e.created_at < '{cut}'")).await;
    assert_eq!(in_window.len(), 4, "A, A1 created, two A1 updates");
    assert_eq!(replayed(&url, &rid3).await, in_window);

    // The global webhook hears every tenant's updates.
    let r = call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{g}/replay"),
        k,
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(r.body["total"], 10);
    let rid4 = id(&r.body);
    drain(&worker).await;
    assert_eq!(
        replayed(&url, &rid4).await,
        events(&url, "e.event_type = 'tenant.updated'").await
    );

    // Audited, once per replay.
    let audit = call(
        &app,
        GET,
        "/api/v1/audit-logs?action=webhook.replayed",
        k,
        None,
    )
    .await;
    assert_eq!(audit.body.as_array().unwrap().len(), 4);
    assert_eq!(audit.body[0]["after_state"]["id"], rid4.as_str());
    assert_eq!(audit.body[0]["after_state"]["total"], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_resumes_after_its_cursor_and_waits_for_its_backlog() {
    let h = harness().await;
    let app = app!(h);
    let k = Some(ADMIN);
    let url = h.db.url.clone();
    let since = sql::texts(&url, "SELECT to_char((now() - interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS t").await[0].clone();
    for i in 0..10 {
        call(
            &app,
            POST,
            "/api/v1/tenants",
            k,
            Some(json!({"name": "T", "slug": format!("t{i}")})),
        )
        .await;
    }
    let w = id(&call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(json!({"url": "http://127.0.0.1:9/x", "events": ["tenant.created"]})),
    )
    .await
    .body);
    let rid = id(&call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{w}/replay"),
        k,
        Some(json!({"since": since})),
    )
    .await
    .body);
    // One worker takes a step, then "dies"; a new one (a restarted process) carries on
    // from the committed cursor.
    let p = replayer(&url, 4).step().await.unwrap().unwrap();
    assert_eq!(p.enqueued, 4);
    drain(&replayer(&url, 4)).await;
    assert_eq!(replayed(&url, &rid).await, events(&url, "true").await);

    // Pacing: with a backlog bound of 3, a job waits while 3 of its deliveries are pending.
    let rid = id(&call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{w}/replay"),
        k,
        Some(json!({"since": since})),
    )
    .await
    .body);
    let pool = stratum_postgres::connect(&url, &Default::default()).unwrap();
    let paced = Replayer::new(
        std::sync::Arc::new(stratum_postgres::PgReplayStore::new(pool)),
        stratum_webhooks::ReplayerConfig {
            batch: 4,
            max_backlog: 3,
            ..Default::default()
        },
    );
    assert_eq!(paced.step().await.unwrap().unwrap().enqueued, 4);
    assert!(
        paced.step().await.unwrap().is_none(),
        "the backlog holds it back"
    );
    sql::exec(
        &url,
        &format!("UPDATE webhook_deliveries SET status = 'success' WHERE replay_id = '{rid}'"),
    )
    .await;
    assert_eq!(paced.step().await.unwrap().unwrap().enqueued, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_is_scoped_and_validated() {
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
    let w = id(&call(
        &app,
        POST,
        "/api/v1/webhooks",
        k,
        Some(json!({"url": "http://127.0.0.1:9/x", "tenant_id": a, "events": ["tenant.updated"]})),
    )
    .await
    .body);
    let key_b = call(
        &app,
        POST,
        "/api/v1/api-keys",
        k,
        Some(json!({"tenant_id": b, "scopes": ["write"]})),
    )
    .await;
    let key_b = key_b.body["plaintext_key"].as_str().unwrap().to_owned();
    let key_a = call(
        &app,
        POST,
        "/api/v1/api-keys",
        k,
        Some(json!({"tenant_id": a, "scopes": ["write"]})),
    )
    .await;
    let key_a = key_a.body["plaintext_key"].as_str().unwrap().to_owned();
    let body = json!({"since": "2026-01-01T00:00:00Z"});
    let path = format!("/api/v1/webhooks/{w}/replay");

    let r = call(&app, POST, &path, Some(&key_b), Some(body.clone())).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "WEBHOOK_NOT_FOUND")
    );
    let r = call(
        &app,
        POST,
        &path,
        Some(&key_a),
        Some(json!({"since": "2026-11-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let rid = id(&r.body);
    let get = format!("/api/v1/webhooks/{w}/replays/{rid}");
    assert_eq!(
        call(&app, GET, &get, Some(&key_a), None).await.status,
        StatusCode::OK
    );
    let r = call(&app, GET, &get, Some(&key_b), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/replays/{}", uuid::Uuid::now_v7()),
        k,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        GET,
        &format!("/api/v1/webhooks/{w}/replays/nope"),
        k,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        POST,
        &format!("/api/v1/webhooks/{}/replay", uuid::Uuid::now_v7()),
        k,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    for bad in [
        json!({}),
        json!({"since": null}),
        json!({"since": "yesterday"}),
        json!({"since": "2026-02-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}),
        json!({"since": "2026-02-02T00:00:00Z", "until": "2026-02-01T00:00:00Z"}),
        json!({"since": "2026-01-01T00:00:00Z", "until": "2026-04-02T00:00:00Z"}),
        json!({"since": "2026-11-01T00:00:00Z", "events": []}),
        json!({"since": "2026-11-01T00:00:00Z", "events": ["tenant.created"]}),
        json!({"since": "2026-11-01T00:00:00Z", "events": ["bogus"]}),
        json!({"since": "2026-11-01T00:00:00Z", "events": null}),
        json!({"since": "2026-11-01T00:00:00Z", "extra": 1}),
        json!({"since": "3000-01-01T00:00:00Z"}),
    ] {
        let r = call(&app, POST, &path, k, Some(bad.clone())).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{bad}: {}",
            r.body
        );
    }
    // Exactly 90 days is allowed.
    let r = call(
        &app,
        POST,
        &path,
        k,
        Some(json!({"since": "2026-01-01T00:00:00Z", "until": "2026-04-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}
