//! Delivery controls end to end: the real binary (serve and separate worker processes), real
//! PostgreSQL, a real receiver on loopback. The breaker and its probes, auto-disable,
//! a rate limit shared by two workers, and a FIFO lane under failures and two workers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratum_e2e::{
    count, default_env, enqueue, eventually, texts, Behaviour, Receiver, Stratum, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

async fn webhook(app: &Stratum, body: Value) -> String {
    let (status, hook) = app.api("POST", "/webhooks", Some(body)).await.unwrap();
    assert_eq!(status, 201, "{hook}");
    hook["id"].as_str().unwrap().to_owned()
}

async fn breaker(app: &Stratum, id: &str) -> Value {
    app.api("GET", &format!("/webhooks/{id}/health"), None)
        .await
        .unwrap()
        .1["breaker"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_receiver_opens_the_breaker_gets_only_probes_keeps_its_attempts_and_recovers() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("dead", Behaviour::Status(503));
    let cooldown = Duration::from_millis(800);
    let env = with(
        default_env(&db),
        &[
            ("STRATUM_WEBHOOK_BREAKER_THRESHOLD", "4"),
            ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MS", "800"),
            ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MAX_MS", "800"),
            ("STRATUM_WEBHOOK_BACKOFF_BASE_MS", "50"),
            ("STRATUM_WEBHOOK_BACKOFF_MAX_MS", "100"),
            ("STRATUM_WEBHOOK_MAX_ATTEMPTS", "100"),
            ("STRATUM_WEBHOOK_INITIAL_IN_FLIGHT_PER_ENDPOINT", "1"),
            ("STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", "1"),
        ],
    );
    let app = Stratum::start(&["serve"], &env).await.unwrap();
    let id = webhook(
        &app,
        json!({"url": format!("{}/dead", rx.base), "events": ["tenant.created"]}),
    )
    .await;
    for i in 0..6 {
        let (s, _) = app
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": format!("T{i}"), "slug": format!("t{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(s, 201);
    }
    assert!(
        eventually(WAIT, || async {
            breaker(&app, &id).await["state"] != "closed"
        })
        .await,
        "the breaker opened"
    );
    let b = breaker(&app, &id).await;
    assert!(b["consecutive_failures"].as_u64().unwrap() >= 4, "{b}");
    // One delivery at a time: the fourth failure opened it, at most the attempt already
    // leased behind it followed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_open = rx.received_on("dead").len();
    assert!(
        (4..=5).contains(&at_open),
        "{at_open} attempts before the breaker opened"
    );

    // Open for a while: only probes, one per cool-down.
    tokio::time::sleep(cooldown * 4).await;
    let seen = rx.received_on("dead");
    let probes = &seen[at_open..];
    assert!(
        (1..=5).contains(&probes.len()),
        "{} probes in four cool-downs",
        probes.len()
    );
    for pair in probes.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= cooldown - Duration::from_millis(50),
            "probes {gap:?} apart"
        );
    }
    // Waiting spent no attempt: every attempt recorded is one the receiver got.
    let attempts = count(
        &db.url,
        &format!("SELECT coalesce(sum(attempts), 0)::bigint AS n FROM webhook_deliveries WHERE webhook_id = '{id}'"),
    )
    .await
    .unwrap();
    assert_eq!(attempts as usize, rx.received_on("dead").len());
    assert_eq!(
        count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{id}' AND status = 'failed'")).await.unwrap(),
        0,
        "nothing dead-lettered while the breaker was open"
    );

    // The receiver comes back: the next probe closes the breaker and the backlog flows.
    rx.set("dead", Behaviour::Ok);
    assert!(
        eventually(WAIT, || async {
            count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{id}' AND status = 'success'"))
                .await
                .unwrap()
                == 6
        })
        .await,
        "every delivery arrived after recovery"
    );
    assert_eq!(breaker(&app, &id).await["state"], "closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_open_past_the_window_disables_the_webhook_with_audit_and_event() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("dead", Behaviour::Status(500));
    let env = with(
        default_env(&db),
        &[
            ("STRATUM_WEBHOOK_BREAKER_THRESHOLD", "2"),
            ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MS", "200"),
            ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MAX_MS", "200"),
            ("STRATUM_WEBHOOK_DISABLE_AFTER_MS", "1"),
            ("STRATUM_WEBHOOK_BACKOFF_BASE_MS", "50"),
            ("STRATUM_WEBHOOK_BACKOFF_MAX_MS", "100"),
            ("STRATUM_WEBHOOK_MAX_ATTEMPTS", "100"),
        ],
    );
    let app = Stratum::start(&["serve"], &env).await.unwrap();
    let dead = webhook(
        &app,
        json!({"url": format!("{}/dead", rx.base), "events": ["tenant.created", "webhook.disabled"]}),
    )
    .await;
    let listener = webhook(
        &app,
        json!({"url": format!("{}/listener", rx.base), "events": ["webhook.disabled"]}),
    )
    .await;
    for i in 0..3 {
        app.api(
            "POST",
            "/tenants",
            Some(json!({"name": format!("T{i}"), "slug": format!("t{i}")})),
        )
        .await
        .unwrap();
    }
    let path = format!("/webhooks/{dead}");
    assert!(
        eventually(WAIT, || async {
            app.api("GET", &path, None).await.unwrap().1["active"] == false
        })
        .await,
        "auto-disabled"
    );
    let (_, w) = app.api("GET", &path, None).await.unwrap();
    assert_eq!(w["disabled_reason"], "failing");
    let (_, entries) = app
        .api(
            "GET",
            &format!("/audit-logs?action=webhook.disabled&resource_id={dead}"),
            None,
        )
        .await
        .unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor_type"], "system");
    assert_eq!(entries[0]["after_state"]["disabled_reason"], "failing");
    assert_eq!(entries[0]["after_state"]["secret"], "[REDACTED]");
    assert!(
        rx.wait_for(WAIT, |r| r.iter().any(|x| x.path == "listener"))
            .await,
        "the tenant audience hears of it"
    );
    let heard = rx.received_on("listener");
    assert_eq!(heard.len(), 1);
    let body: Value = serde_json::from_slice(&heard[0].body).unwrap();
    assert_eq!(body["event"], "webhook.disabled");
    assert_eq!(body["data"]["id"], dead.as_str());
    assert_eq!(body["data"]["disabled_reason"], "failing");
    assert!(body["data"].get("secret").is_none());
    // Never delivered to the disabled webhook itself, though it subscribed.
    assert_eq!(
        count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{dead}' AND event_type = 'webhook.disabled'")).await.unwrap(),
        0
    );
    assert!(!listener.is_empty());
    // The receiver is fixed and the webhook turned on again by hand: the reason goes, the
    // breaker closes, and the backlog that waited flows.
    rx.set("dead", Behaviour::Ok);
    let (s, w) = app
        .api("PATCH", &path, Some(json!({"active": true})))
        .await
        .unwrap();
    assert_eq!((s, w["disabled_reason"].clone()), (200, Value::Null));
    assert!(
        eventually(WAIT, || async {
            count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{dead}' AND status = 'pending'"))
                .await
                .unwrap()
                == 0
        })
        .await
    );
    assert_eq!(breaker(&app, &dead).await["state"], "closed");
}

/// The most arrivals in any one-second window [t, t + 1 s).
fn worst_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut worst = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= Duration::from_secs(1) {
            lo += 1;
        }
        worst = worst.max(hi - lo + 1);
    }
    worst
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_together_keep_a_rate_limit() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let env = default_env(&db);
    let api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let id = webhook(
        &api,
        json!({"url": format!("{}/limited", rx.base), "events": ["tenant.updated"], "rate_limit_per_second": 20}),
    )
    .await;
    let _w1 = Stratum::start(&["worker"], &env).await.unwrap();
    let _w2 = Stratum::start(&["worker"], &env).await.unwrap();
    enqueue(&db, &id, 120).await;
    assert!(
        rx.wait_for(WAIT, |r| r.len() >= 120).await,
        "all 120 delivered"
    );
    let got = rx.received_on("limited");
    let arrivals: Vec<Instant> = got.iter().map(|r| r.at).collect();
    let worst = worst_second(&arrivals);
    assert!(
        worst <= 22,
        "{worst} requests in one second against a limit of 20"
    );
    // The whole took about as long as the limit says.
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(5000),
        "120 at 20/s took {span:?}"
    );
    let distinct: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(
        (got.len(), distinct.len()),
        (120, 120),
        "each delivered once"
    );
    // Every attempt is recorded once its completion is written.
    assert!(
        eventually(WAIT, || async {
            texts(
                &db.url,
                &format!("SELECT count(*)::text AS t FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = '{id}'"),
            )
            .await
            .unwrap()
                == vec!["120".to_owned()]
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_webhook_gets_one_tenants_changes_in_audit_chain_order_under_failures() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    rx.set("fifo", Behaviour::FailEvery(5));
    let env = with(
        default_env(&db),
        &[
            ("STRATUM_WEBHOOK_BACKOFF_BASE_MS", "20"),
            ("STRATUM_WEBHOOK_BACKOFF_MAX_MS", "50"),
        ],
    );
    let api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let (_, tenant) = api
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "Acme", "slug": "acme"})),
        )
        .await
        .unwrap();
    let tid = tenant["id"].as_str().unwrap().to_owned();
    webhook(
        &api,
        json!({"url": format!("{}/fifo", rx.base), "events": ["tenant.updated"], "ordering": "fifo", "tenant_id": tid}),
    )
    .await;
    let _w1 = Stratum::start(&["worker"], &env).await.unwrap();
    let _w2 = Stratum::start(&["worker"], &env).await.unwrap();

    // 200 concurrent PATCHes of one tenant.
    let client = stratum_e2e::client();
    let patches: Vec<_> = (0..200)
        .map(|i| {
            let url = format!("{}/api/v1/tenants/{tid}", api.base);
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .patch(url)
                    .header("X-API-Key", stratum_e2e::ADMIN)
                    .json(&json!({"name": format!("name-{i:03}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for p in patches {
        assert_eq!(p.await.unwrap(), 200);
    }
    let delivered = |r: &[stratum_e2e::Received]| r.iter().filter(|x| x.status == 200).count();
    assert!(
        rx.wait_for(Duration::from_secs(120), |r| delivered(r) >= 200)
            .await,
        "all 200 delivered"
    );
    let got = rx.received_on("fifo");
    // One in flight: each request arrived after the one before was answered, so arrival
    // order is send order; a failed attempt is followed by its own retry.
    let names: Vec<String> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["name"].as_str().unwrap().to_owned()
        })
        .collect();
    for w in got.windows(2) {
        if w[0].status != 200 {
            assert_eq!(
                w[0].headers["webhook-id"], w[1].headers["webhook-id"],
                "a failing head holds the lane"
            );
        }
    }
    assert!(
        got.iter().any(|r| r.status == 500),
        "the precondition: some attempts failed"
    );
    // The tenant's audit chain, once sealed, in chain order.
    assert!(
        eventually(WAIT, || async {
            count(&db.url, &format!("SELECT count(*) AS n FROM audit_logs WHERE resource_id = '{tid}' AND action = 'tenant.updated' AND seq IS NOT NULL"))
                .await
                .unwrap()
                == 200
        })
        .await
    );
    let chain = texts(
        &db.url,
        &format!("SELECT after_state->>'name' AS t FROM audit_logs WHERE resource_id = '{tid}' AND action = 'tenant.updated' ORDER BY seq"),
    )
    .await
    .unwrap();
    assert_eq!(names, chain);
}
