//! The audit write port on a real PostgreSQL: what `PgAuditSink` appends, that it commits
//! and rolls back with the transaction it is given, that secrets are redacted on the way,
//! and that the SQL fan-out selects exactly the webhooks the domain's `Audience` rule
//! (plus subscription and `active`) says hear the event.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::BTreeSet;

use diesel::sql_types::{Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use stratum_audit::Audience;
use stratum_core::{Caller, EventType, Journal, TenantPath};
use stratum_postgres::stratum_trail;
use stratum_testkit::fixtures::WebhookRow;
use stratum_testkit::sql::{conn, exec_on};
use stratum_testkit::TestDb;
use uuid::Uuid;

/// Inserts an active tenant at `path` (its leaf is its id).
async fn tenant(c: &mut AsyncPgConnection, path: &TenantPath) {
    let id = path.leaf().unwrap();
    let ids = path.ids();
    let parent = (ids.len() > 1).then(|| ids[ids.len() - 2]);
    diesel::sql_query(
        "INSERT INTO tenants (id, parent_id, name, slug, ancestry_path, depth)
         VALUES ($1, $2, 'T', $3, $4, $5)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<SqlUuid>, _>(parent)
    .bind::<Text, _>(format!("t{}", id.simple()))
    .bind::<Text, _>(path.as_str())
    .bind::<diesel::sql_types::Int4, _>(path.depth() as i32)
    .execute(c)
    .await
    .unwrap();
}

/// A webhook as the test registers it.
type Hook = WebhookRow;

async fn webhook(
    c: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    events: &[&str],
    active: bool,
) -> Hook {
    let hook = WebhookRow::new()
        .tenant(tenant)
        .events(events)
        .active(active);
    hook.insert_on(c).await;
    hook
}

#[derive(QueryableByName)]
struct Delivery {
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
}

async fn delivered_to(c: &mut AsyncPgConnection, event_type: &str) -> BTreeSet<Uuid> {
    let rows: Vec<Delivery> =
        diesel::sql_query("SELECT webhook_id FROM webhook_deliveries WHERE event_type = $1")
            .bind::<Text, _>(event_type)
            .load(c)
            .await
            .unwrap();
    rows.into_iter().map(|r| r.webhook_id).collect()
}

#[derive(QueryableByName)]
struct Logged {
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Nullable<Jsonb>)]
    before_state: Option<Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    after_state: Option<Value>,
    #[diesel(sql_type = Jsonb)]
    metadata: Value,
}

#[derive(QueryableByName)]
struct Event {
    #[diesel(sql_type = Jsonb)]
    payload: Value,
}

async fn audit_rows(c: &mut AsyncPgConnection) -> Vec<Logged> {
    diesel::sql_query(
        "SELECT action, before_state, after_state, metadata FROM audit_logs ORDER BY created_at, id",
    )
    .load(c)
    .await
    .unwrap()
}

async fn events(c: &mut AsyncPgConnection) -> Vec<Event> {
    diesel::sql_query("SELECT payload FROM webhook_events ORDER BY created_at, id")
        .load(c)
        .await
        .unwrap()
}

/// Appends `journal` through Stratum's trail in a transaction of its own, committed.
async fn append_committed(c: &mut AsyncPgConnection, journal: &Journal) -> u64 {
    exec_on(c, "BEGIN").await;
    let n = stratum_trail().append(c, journal).await.unwrap();
    exec_on(c, "COMMIT").await;
    n
}

/// What the domain says: active, subscribed, and heard by the audience.
fn expected(hooks: &[Hook], event_type: &str, audience: &Audience) -> BTreeSet<Uuid> {
    hooks
        .iter()
        .filter(|h| h.active && h.events.iter().any(|e| e == event_type))
        .filter(|h| audience.hears(h.tenant))
        .map(|h| h.id)
        .collect()
}

#[tokio::test]
async fn the_sql_fan_out_selects_exactly_the_webhooks_the_audience_rule_names() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    // root ─ parent ─ leaf ─ child, a sibling of leaf, a second tree (other), and a
    // former parent (old) that only the extra audience names.
    let root = TenantPath::root(Uuid::now_v7());
    let parent = root.child(Uuid::now_v7());
    let leaf = parent.child(Uuid::now_v7());
    let child = leaf.child(Uuid::now_v7());
    let sibling = parent.child(Uuid::now_v7());
    let other = TenantPath::root(Uuid::now_v7());
    let old = other.child(Uuid::now_v7());
    for p in [&root, &parent, &leaf, &child, &sibling, &other, &old] {
        tenant(&mut c, p).await;
    }
    let mut hooks = Vec::new();
    for t in [
        None,
        Some(&root),
        Some(&parent),
        Some(&leaf),
        Some(&child),
        Some(&sibling),
        Some(&other),
        Some(&old),
    ] {
        let t = t.map(|p| p.leaf().unwrap());
        hooks.push(webhook(&mut c, t, &["tenant.moved", "tenant.updated"], true).await);
        hooks.push(webhook(&mut c, t, &["tenant.moved"], false).await);
        hooks.push(webhook(&mut c, t, &["consent.granted"], true).await);
    }

    let cases: Vec<(&str, Option<&TenantPath>, Vec<Uuid>)> = vec![
        // An event of leaf: its ancestry and the global webhooks.
        ("tenant.updated", Some(&leaf), vec![]),
        // A move out of `old`: its former ancestors too.
        (
            "tenant.moved",
            Some(&leaf),
            vec![old.leaf().unwrap(), other.leaf().unwrap()],
        ),
        // A global event: global webhooks (and an extra audience, when given).
        ("tenant.updated", None, vec![sibling.leaf().unwrap()]),
        ("tenant.moved", None, vec![]),
    ];
    for (event_type, path, extra) in cases {
        exec_on(&mut c, "DELETE FROM webhook_deliveries").await;
        let journal = Caller::system()
            .journal(event_type, "tenant")
            .tenant(path.and_then(TenantPath::leaf))
            .emit(
                EventType::parse(event_type).unwrap(),
                json!({"case": event_type}),
            )
            .also_to(extra.clone());
        let n = append_committed(&mut c, &journal).await;
        let want = expected(&hooks, event_type, &Audience::of(path, &extra));
        let got = delivered_to(&mut c, event_type).await;
        assert!(!want.is_empty(), "each case expects some deliveries");
        assert_eq!(got, want, "{event_type} of {path:?} with extra {extra:?}");
        assert_eq!(n, want.len() as u64, "the sink counts the deliveries");
    }
}

#[tokio::test]
async fn an_event_of_a_tenant_that_no_longer_exists_reaches_only_global_webhooks() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    let t = TenantPath::root(Uuid::now_v7());
    tenant(&mut c, &t).await;
    let global = webhook(&mut c, None, &["tenant.deleted"], true).await;
    webhook(&mut c, t.leaf(), &["tenant.deleted"], true).await;
    let journal = Caller::system()
        .journal("tenant.deleted", "tenant")
        .tenant(Some(Uuid::now_v7()))
        .emit(EventType::from_static("tenant.deleted"), json!({}));
    assert_eq!(append_committed(&mut c, &journal).await, 1);
    assert_eq!(
        delivered_to(&mut c, "tenant.deleted").await,
        BTreeSet::from([global.id])
    );
}

#[tokio::test]
async fn an_append_rolls_back_with_its_transaction() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    let hook = webhook(&mut c, None, &["tenant.created"], true).await;
    let journal = Caller::system()
        .journal("tenant.created", "tenant")
        .after(Some(json!({"name": "gone"})))
        .emit(
            EventType::from_static("tenant.created"),
            json!({"name": "gone"}),
        );
    exec_on(&mut c, "BEGIN").await;
    assert_eq!(stratum_trail().append(&mut c, &journal).await.unwrap(), 1);
    exec_on(&mut c, "ROLLBACK").await;
    assert!(audit_rows(&mut c).await.is_empty());
    assert!(events(&mut c).await.is_empty());
    assert!(delivered_to(&mut c, "tenant.created").await.is_empty());

    assert_eq!(append_committed(&mut c, &journal).await, 1);
    assert_eq!(audit_rows(&mut c).await.len(), 1);
    assert_eq!(events(&mut c).await.len(), 1);
    assert_eq!(
        delivered_to(&mut c, "tenant.created").await,
        BTreeSet::from([hook.id])
    );
}

#[tokio::test]
async fn secrets_are_redacted_in_the_entry_and_the_event_and_request_facts_kept() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    let mut caller = Caller::system();
    caller.meta.request_id = Some("req-42".into());
    caller.meta.ip = Some("192.0.2.1".into());
    let journal = caller
        .journal("webhook.updated", "webhook")
        .before(Some(json!({"url": "https://a", "secret": "whsec_old"})))
        .after(Some(json!({"url": "https://b", "secret": "whsec_new"})))
        .emit(
            EventType::from_static("webhook.updated"),
            json!({"url": "https://b", "nested": [{"secret": "whsec_new"}]}),
        );
    append_committed(&mut c, &journal).await;
    let rows = audit_rows(&mut c).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.action, "webhook.updated");
    assert_eq!(
        row.before_state,
        Some(json!({"url": "https://a", "secret": "[REDACTED]"}))
    );
    assert_eq!(
        row.after_state,
        Some(json!({"url": "https://b", "secret": "[REDACTED]"}))
    );
    assert_eq!(
        row.metadata,
        json!({"request_id": "req-42", "ip": "192.0.2.1", "user_agent": null})
    );
    let ev = events(&mut c).await;
    assert_eq!(
        ev[0].payload,
        json!({"url": "https://b", "nested": [{"secret": "[REDACTED]"}]})
    );
}
