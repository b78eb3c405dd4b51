//! Replay with the real binary: killed with -9 in the middle of a replay, restarted, every
//! event enqueued exactly once and in order, and each replayed body the original's byte
//! for byte under a new delivery id.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use stratum_e2e::{count, default_env, eventually, Receiver, Stratum, TestDb};

const EVENTS: i64 = 40;

#[derive(diesel::QueryableByName)]
struct Job {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    enqueued: i64,
}

async fn job(url: &str, id: &str) -> Job {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(format!(
        "SELECT status, enqueued FROM webhook_replays WHERE id = '{id}'"
    ))
    .get_result(&mut c)
    .await
    .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Pair {
    #[diesel(sql_type = diesel::sql_types::Text)]
    a: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    b: String,
}

async fn pairs(url: &str, q: &str) -> Vec<(String, String)> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    let rows: Vec<Pair> = diesel::sql_query(q).load(&mut c).await.unwrap();
    rows.into_iter().map(|p| (p.a, p.b)).collect()
}

fn event_id_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_mid_way_resumes_without_duplicates_or_gaps() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let mut env = default_env(&db);
    // Slow pacing so that the kill lands while the job runs: 5 events per step, 400 ms apart.
    env.push(("STRATUM_REPLAY_BATCH_SIZE".into(), "5".into()));
    env.push(("STRATUM_REPLAY_PAUSE_MS".into(), "400".into()));
    let mut app = Stratum::start(&["serve"], &env).await.unwrap();
    let (st, w) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/w", rx.base), "events": ["tenant.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{w}");
    let wid = w["id"].as_str().unwrap().to_owned();
    let mut since = String::new();
    for i in 0..EVENTS {
        let (st, t) = app
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": "T", "slug": format!("t{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(st, 201);
        if i == 0 {
            since = t["created_at"].as_str().unwrap().to_owned();
        }
    }
    assert!(
        rx.wait_for(Duration::from_secs(30), |r| r.len() as i64 == EVENTS)
            .await,
        "the live deliveries did not all arrive"
    );
    let live: HashMap<String, (Vec<u8>, String)> = rx
        .received_on("w")
        .into_iter()
        .map(|r| {
            (
                event_id_of(&r.body),
                (r.body.clone(), r.headers["webhook-id"].clone()),
            )
        })
        .collect();
    assert_eq!(live.len() as i64, EVENTS);

    let (st, r) = app
        .api(
            "POST",
            &format!("/webhooks/{wid}/replay"),
            Some(json!({"since": since})),
        )
        .await
        .unwrap();
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["total"], EVENTS);
    let rid = r["id"].as_str().unwrap().to_owned();
    let url = db.url.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let (url, rid) = (url.clone(), rid.clone());
            async move { job(&url, &rid).await.enqueued >= 10 }
        })
        .await,
        "the replay did not start"
    );
    app.kill9();
    let at_kill = job(&url, &rid).await;
    assert_eq!(
        at_kill.status, "running",
        "killed while the job was running"
    );
    assert!(
        at_kill.enqueued > 0 && at_kill.enqueued < EVENTS,
        "some but not all enqueued at the kill: {}",
        at_kill.enqueued
    );

    let app = Stratum::start(&["serve"], &env).await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let (url, rid) = (url.clone(), rid.clone());
            async move { job(&url, &rid).await.status == "completed" }
        })
        .await,
        "the replay did not complete after the restart"
    );
    let (st, done) = app
        .api("GET", &format!("/webhooks/{wid}/replays/{rid}"), None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(done["enqueued"], EVENTS);
    assert_eq!(done["status"], "completed");

    // Exactly once, in the events' order: delivery ids are minted in event order.
    let order = pairs(
        &url,
        &format!(
            "SELECT d.event_id::text AS a, d.id::text AS b FROM webhook_deliveries d
              JOIN webhook_events e ON e.id = d.event_id
             WHERE d.replay_id = '{rid}' ORDER BY e.created_at, e.id"
        ),
    )
    .await;
    assert_eq!(order.len() as i64, EVENTS);
    let events: HashSet<&String> = order.iter().map(|(e, _)| e).collect();
    assert_eq!(events.len() as i64, EVENTS, "no event twice");
    let ids: Vec<&String> = order.iter().map(|(_, d)| d).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "enqueued oldest first");
    assert_eq!(
        count(
            &url,
            &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE replay_id = '{rid}'")
        )
        .await
        .unwrap(),
        EVENTS
    );

    // Each replayed delivery arrives with the original body, byte for byte, under a new id.
    assert!(
        rx.wait_for(Duration::from_secs(60), |r| r.len() as i64 >= 2 * EVENTS)
            .await,
        "the replayed deliveries did not all arrive"
    );
    let all = rx.received_on("w");
    assert_eq!(all.len() as i64, 2 * EVENTS);
    let mut seen = HashSet::new();
    for r in all {
        let e = event_id_of(&r.body);
        let (body, live_id) = &live[&e];
        assert_eq!(&r.body, body, "the same bytes for event {e}");
        if &r.headers["webhook-id"] != live_id {
            assert!(seen.insert(e), "one replayed delivery per event");
        }
    }
    assert_eq!(seen.len() as i64, EVENTS);
}
