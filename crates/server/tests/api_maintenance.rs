//! Maintenance through the real application on real PostgreSQL: the retention purge over
//! back-dated rows, and the encryption-key rotation of 10,000 + 10,000 secrets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use common::{app, call, call_any, call_raw, harness, sql, ADMIN, ENCRYPTION_KEY, GET, POST, PUT};
use diesel::sql_types::{Array, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use stratum_crypto::{envelope_key_id, EncryptionKey};
use uuid::Uuid;

const PURGE: &str = "/api/v1/maintenance/purge-expired";
const ROTATE: &str = "/api/v1/maintenance/rotate-encryption-key";
const NEW_KEY: &str = "the-next-encryption-key-0123456789abcdefgh";

fn key(master: &str) -> EncryptionKey {
    EncryptionKey::derive(master).unwrap()
}

// ---------------------------------------------------------------------------------------
// Fixtures, written with SQL so they can be back-dated and made by the ten thousand
// ---------------------------------------------------------------------------------------

async fn tenant(url: &str, slug: &str) -> Uuid {
    let id = Uuid::now_v7();
    sql::exec(
        url,
        &format!(
            "INSERT INTO tenants (id, name, slug, ancestry_path, depth)
             VALUES ('{id}', '{slug}', '{slug}', '/{id}/', 0)"
        ),
    )
    .await;
    id
}

async fn webhook(url: &str, secret_encrypted: &str) -> Uuid {
    let id = Uuid::now_v7();
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhooks (id, url, events, secret_encrypted)
             VALUES ('{id}', 'https://example.com/{id}', '{{tenant.updated}}', '{secret_encrypted}')"
        ),
    )
    .await;
    id
}

/// An event created `days` ago.
async fn event(url: &str, days: i64) -> Uuid {
    let id = Uuid::now_v7();
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhook_events (id, event_type, payload, created_at)
             VALUES ('{id}', 'tenant.updated', '{{}}', now() - interval '{days} days')"
        ),
    )
    .await;
    id
}

/// A delivery in `status`, completed `completed_days` ago (None: not completed), with two
/// recorded attempts.
async fn delivery(
    url: &str,
    webhook_id: Uuid,
    event_id: Uuid,
    status: &str,
    completed_days: Option<i64>,
) -> Uuid {
    let id = Uuid::now_v7();
    let completed = completed_days.map_or("NULL".to_owned(), |d| {
        format!("now() - interval '{d} days'")
    });
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, created_at, completed_at)
             VALUES ('{id}', '{webhook_id}', '{event_id}', 'tenant.updated', '{status}', 2, now() - interval '200 days', {completed})"
        ),
    )
    .await;
    sql::exec(
        url,
        &format!(
            "INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, duration_ms)
             VALUES (stratum_uuid_v7(), '{id}', '{event_id}', 1, 5), (stratum_uuid_v7(), '{id}', '{event_id}', 2, 5)"
        ),
    )
    .await;
    id
}

async fn audit_entry(url: &str, days: i64) -> Uuid {
    let id = Uuid::now_v7();
    sql::exec(
        url,
        &format!(
            "INSERT INTO audit_logs (id, actor_id, actor_type, action, resource_type, created_at)
             VALUES ('{id}', 'system', 'system', 'tenant.updated', 'tenant', now() - interval '{days} days')"
        ),
    )
    .await;
    id
}

/// A consent record; `revoked`/`expires` are days from now (negative: in the past).
async fn consent(url: &str, tenant_id: Uuid, revoked: Option<i64>, expires: Option<i64>) -> Uuid {
    let id = Uuid::now_v7();
    let at = |d: Option<i64>| {
        d.map_or("NULL".to_owned(), |d| {
            format!("now() + interval '{d} days'")
        })
    };
    sql::exec(
        url,
        &format!(
            "INSERT INTO consent_records (id, tenant_id, subject_id, purpose, granted, granted_at, revoked_at, expires_at, created_at)
             VALUES ('{id}', '{tenant_id}', 'subject-{id}', 'marketing', {granted}, now() - interval '400 days', {revoked_at}, {expires_at}, now() - interval '400 days')",
            granted = revoked.is_none(),
            revoked_at = at(revoked),
            expires_at = at(expires),
        ),
    )
    .await;
    id
}

async fn ids(url: &str, table: &str) -> Vec<String> {
    let mut v = sql::texts(url, &format!("SELECT id::text AS t FROM {table}")).await;
    v.sort();
    v
}

fn sorted(v: &[Uuid]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(Uuid::to_string).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// purge-expired
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn purge_deletes_exactly_what_expired() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let secret = key(ENCRYPTION_KEY).encrypt_str("whsec_x").unwrap();
    let (w1, w2) = (webhook(url, &secret).await, webhook(url, &secret).await);

    // Deliveries and events (default window: 90 days).
    let e_done = event(url, 200).await;
    let d_done = delivery(url, w1, e_done, "success", Some(100)).await;
    let e_dead = event(url, 200).await;
    let d_dead = delivery(url, w1, e_dead, "failed", Some(95)).await;
    let e_pending = event(url, 200).await;
    let d_pending = delivery(url, w1, e_pending, "pending", None).await;
    let e_shared = event(url, 200).await;
    let d_shared_old = delivery(url, w1, e_shared, "success", Some(120)).await;
    let d_shared_recent = delivery(url, w2, e_shared, "success", Some(10)).await;
    let e_edge = event(url, 200).await;
    let d_edge = delivery(url, w1, e_edge, "failed", Some(89)).await;
    let e_orphan_old = event(url, 91).await;
    let e_orphan_recent = event(url, 10).await;
    // Audit (default window: 365 days).
    let a_old: Vec<Uuid> = vec![
        audit_entry(url, 400).await,
        audit_entry(url, 366).await,
        audit_entry(url, 1000).await,
    ];
    let a_kept = vec![audit_entry(url, 364).await, audit_entry(url, 10).await];
    // Consent (retention window).
    let t = tenant(url, "acme").await;
    let c_revoked_old = consent(url, t, Some(-100), None).await;
    let c_expired_old = consent(url, t, None, Some(-91)).await;
    let c_revoked_recent = consent(url, t, Some(-10), Some(30)).await;
    let c_expired_recent = consent(url, t, None, Some(-10)).await;
    let c_active = consent(url, t, None, None).await;
    let c_active_expiring = consent(url, t, None, Some(30)).await;

    let r = call(&app, POST, PURGE, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"deleted_count": 11, "deliveries": 3, "events": 3, "audit_logs": 3, "consent_records": 2})
    );
    assert_eq!(
        ids(url, "webhook_deliveries").await,
        sorted(&[d_pending, d_shared_recent, d_edge])
    );
    assert_eq!(
        ids(url, "webhook_events").await,
        sorted(&[e_pending, e_shared, e_edge, e_orphan_recent]),
        "events of pending or remaining deliveries stay"
    );
    let _ = (d_done, d_dead, d_shared_old, e_done, e_dead, e_orphan_old);
    assert_eq!(
        sql::count(url, "SELECT count(*) AS n FROM webhook_delivery_attempts").await,
        6,
        "the attempts of deleted deliveries went with them"
    );
    assert_eq!(
        sql::count(
            url,
            &format!(
                "SELECT count(*) AS n FROM webhook_delivery_attempts
                  WHERE delivery_id NOT IN ('{d_pending}', '{d_shared_recent}', '{d_edge}')"
            )
        )
        .await,
        0
    );
    assert_eq!(
        ids(url, "consent_records").await,
        sorted(&[
            c_revoked_recent,
            c_expired_recent,
            c_active,
            c_active_expiring
        ])
    );
    let _ = (c_revoked_old, c_expired_old);
    let audit = sql::texts(
        url,
        "SELECT id::text AS t FROM audit_logs WHERE action <> 'maintenance.purge_expired'",
    )
    .await;
    let mut audit = audit;
    audit.sort();
    assert_eq!(audit, sorted(&a_kept));
    for gone in &a_old {
        assert!(!audit.contains(&gone.to_string()));
    }

    // The purge journals itself, with the counts.
    let entries = call(
        &app,
        GET,
        "/api/v1/audit-logs?action=maintenance.purge_expired",
        Some(ADMIN),
        None,
    )
    .await;
    let entries = entries.body.as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let after = &entries[0]["after_state"];
    assert_eq!(after["deleted_count"], 11);
    assert_eq!(after["deliveries"], 3);
    assert_eq!(after["retention_days"], 90);
    assert_eq!(after["audit_retention_days"], 365);
    assert_eq!(entries[0]["actor_id"], "bootstrap");

    // Nothing more to do: a second purge deletes nothing (its own entry and the first
    // purge's are recent).
    let again = call(&app, POST, PURGE, Some(ADMIN), Some(json!({}))).await;
    assert_eq!(again.body["deleted_count"], 0, "{}", again.body);

    // A shorter window reaches the recent rows; pending deliveries and their events stay.
    let short = call(
        &app,
        POST,
        PURGE,
        Some(ADMIN),
        Some(json!({"retention_days": 5})),
    )
    .await;
    assert_eq!(
        short.body,
        json!({"deleted_count": 7, "deliveries": 2, "events": 3, "audit_logs": 0, "consent_records": 2}),
        "d_shared_recent, d_edge; e_shared, e_edge, e_orphan_recent; c_revoked_recent, c_expired_recent"
    );
    assert_eq!(ids(url, "webhook_deliveries").await, sorted(&[d_pending]));
    assert_eq!(ids(url, "webhook_events").await, sorted(&[e_pending]));
    assert_eq!(
        ids(url, "consent_records").await,
        sorted(&[c_active, c_active_expiring])
    );
}

/// More rows than one purge batch (5,000) in every table, so the cursors are walked
/// through several batches.
#[tokio::test(flavor = "multi_thread")]
async fn purge_works_through_many_batches() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let secret = key(ENCRYPTION_KEY).encrypt_str("whsec_x").unwrap();
    let w = webhook(url, &secret).await;
    let t = tenant(url, "acme").await;
    for q in [
        "INSERT INTO webhook_events (id, event_type, payload, created_at)
         SELECT stratum_uuid_v7(), 'tenant.updated', jsonb_build_object('n', g), now() - interval '200 days'
           FROM generate_series(1, 12345) g",
        // 12,000 finished long ago, 345 still pending: their events must stay.
        &format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, completed_at)
             SELECT stratum_uuid_v7(), '{w}', e.id, 'tenant.updated',
                    CASE WHEN n <= 12000 THEN (CASE WHEN n % 2 = 0 THEN 'success' ELSE 'failed' END) ELSE 'pending' END,
                    1, CASE WHEN n <= 12000 THEN now() - interval '100 days' END
               FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM webhook_events) e"
        ),
        "INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, duration_ms)
         SELECT stratum_uuid_v7(), id, event_id, 1, 3 FROM webhook_deliveries",
        // Events nobody references, old and new.
        "INSERT INTO webhook_events (id, event_type, payload, created_at)
         SELECT stratum_uuid_v7(), 'tenant.updated', '{}', now() - (g % 2) * interval '200 days'
           FROM generate_series(1, 7000) g",
        "INSERT INTO audit_logs (id, actor_id, actor_type, action, resource_type, created_at)
         SELECT stratum_uuid_v7(), 'system', 'system', 'tenant.updated', 'tenant',
                now() - CASE WHEN g <= 11000 THEN interval '400 days' ELSE interval '1 day' END
           FROM generate_series(1, 11500) g",
        &format!(
            "INSERT INTO consent_records (id, tenant_id, subject_id, purpose, granted, granted_at, revoked_at, expires_at)
             SELECT stratum_uuid_v7(), '{t}', 'subject-' || g, 'marketing', g % 3 <> 0, now() - interval '400 days',
                    CASE WHEN g % 3 = 0 THEN now() - interval '100 days' END,
                    CASE WHEN g % 3 = 1 THEN now() - interval '100 days' WHEN g % 3 = 2 THEN now() + interval '1 day' END
               FROM generate_series(1, 15000) g"
        ),
    ] {
        sql::exec(url, q).await;
    }
    let r = call(&app, POST, PURGE, Some(ADMIN), None).await;
    assert_eq!(
        r.body,
        json!({"deleted_count": 12000 + 15500 + 11000 + 10000, "deliveries": 12000,
               "events": 15500, "audit_logs": 11000, "consent_records": 10000})
    );
    let left = |q: &'static str| sql::count(url, q);
    assert_eq!(
        left("SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'").await,
        345
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM webhook_deliveries").await,
        345
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM webhook_delivery_attempts").await,
        345
    );
    assert_eq!(
        left(
            "SELECT count(*) AS n FROM webhook_events e
              WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)"
        )
        .await,
        345
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM webhook_events").await,
        345 + 3500
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM audit_logs WHERE action <> 'maintenance.purge_expired'")
            .await,
        500
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM consent_records").await,
        5000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_of_an_empty_database_and_its_bodies() {
    let h = harness().await;
    let app = app!(h);
    let zero = json!({"deleted_count": 0, "deliveries": 0, "events": 0, "audit_logs": 0, "consent_records": 0});
    // No body at all, an empty JSON body, `{}`, `null`, an explicit null.
    let r = call(&app, POST, PURGE, Some(ADMIN), None).await;
    assert_eq!((r.status, &r.body), (StatusCode::OK, &zero));
    for (ctype, body) in [
        ("application/json", ""),
        ("application/json", "{}"),
        ("application/json", "null"),
        ("application/json", r#"{"retention_days": null}"#),
        ("application/json", r#"{"retention_days": 3650}"#),
        ("application/json", r#"{"retention_days": 1}"#),
    ] {
        let r = call_raw(&app, POST, PURGE, ADMIN, ctype, body.as_bytes().to_vec()).await;
        assert_eq!((r.status, &r.body), (StatusCode::OK, &zero), "{body}");
    }
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'maintenance.purge_expired'"
        )
        .await,
        7,
        "every purge is journaled, even an empty one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_validates_the_window() {
    let h = harness().await;
    let app = app!(h);
    for bad in [json!(0), json!(-1), json!(3651), json!(5000)] {
        let r = call(
            &app,
            POST,
            PURGE,
            Some(ADMIN),
            Some(json!({"retention_days": bad})),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{bad}"
        );
        assert_eq!(
            r.body["error"]["details"][0]["field"], "retention_days",
            "{bad}"
        );
    }
    for bad in [
        json!({"retention_days": "x"}),
        json!({"retention_days": 1.5}),
        json!({"retention_days": true}),
        json!({"retention": 30}),
        json!([30]),
    ] {
        let r = call(&app, POST, PURGE, Some(ADMIN), Some(bad.clone())).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{bad}"
        );
    }
    for (ctype, body) in [
        ("application/json", "{"),
        ("text/plain", r#"{"retention_days": 30}"#),
    ] {
        let r = call_raw(&app, POST, PURGE, ADMIN, ctype, body.as_bytes().to_vec()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{body}"
        );
    }
    let big = vec![b' '; 300 * 1024];
    let r = call_raw(&app, POST, PURGE, ADMIN, "application/json", big).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    assert_eq!(
        sql::count(&h.db.url, "SELECT count(*) AS n FROM audit_logs").await,
        0,
        "a refused purge journals nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_needs_an_admin_global_key() {
    let h = harness().await;
    let app = app!(h);
    let t = call(
        &app,
        POST,
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "A", "slug": "a"})),
    )
    .await;
    let t = t.body["id"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for body in [
        json!({"scopes": ["read"]}),
        json!({"scopes": ["write"]}),
        json!({"scopes": ["admin"], "tenant_id": t}),
    ] {
        let k = call(&app, POST, "/api/v1/api-keys", Some(ADMIN), Some(body)).await;
        assert_eq!(k.status, StatusCode::CREATED, "{}", k.body);
        keys.push(k.body["plaintext_key"].as_str().unwrap().to_owned());
    }
    let rotate = json!({"old_key": ENCRYPTION_KEY, "new_key": NEW_KEY});
    for k in &keys {
        let r = call(&app, POST, PURGE, Some(k), Some(json!({}))).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
        let r = call(&app, POST, ROTATE, Some(k), Some(rotate.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    }
    for path in [PURGE, ROTATE] {
        let r = call(&app, POST, path, None, Some(rotate.clone())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        sql::count(
            &h.db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action LIKE 'maintenance.%'"
        )
        .await,
        0
    );
    // A stored global admin key may.
    let admin = call(
        &app,
        POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"scopes": ["admin"]})),
    )
    .await;
    let admin = admin.body["plaintext_key"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&app, POST, PURGE, Some(&admin), None).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------
// rotate-encryption-key
// ---------------------------------------------------------------------------------------

/// `n` sensitive config values spread over `tenants`, and `n` webhooks, all encrypted
/// under the test key; returns the plaintexts by tenant/key and by webhook id.
async fn secrets(
    url: &str,
    tenants: &[Uuid],
    n: usize,
) -> (BTreeMap<(Uuid, String), String>, BTreeMap<Uuid, String>) {
    let k = key(ENCRYPTION_KEY);
    let mut configs = BTreeMap::new();
    let (mut t_ids, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = tenants[i % tenants.len()];
        let name = format!("secret.{i}");
        let plain = serde_json::to_string(&json!(format!("value-{i}-{}", Uuid::new_v4()))).unwrap();
        t_ids.push(t);
        keys.push(name.clone());
        values.push(k.encrypt_str(&plain).unwrap());
        configs.insert((t, name), plain);
    }
    let mut hooks = BTreeMap::new();
    let (mut h_ids, mut h_secrets) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = Uuid::now_v7();
        let plain = format!("whsec_{i}_{}", Uuid::new_v4().simple());
        h_ids.push(id);
        h_secrets.push(k.encrypt_str(&plain).unwrap());
        hooks.insert(id, plain);
    }
    let mut c = sql::conn(url).await;
    diesel::sql_query(
        "INSERT INTO config_entries (tenant_id, key, encrypted_value, sensitive)
         SELECT * , true FROM unnest($1::uuid[], $2::text[], $3::text[])",
    )
    .bind::<Array<SqlUuid>, _>(&t_ids)
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Text>, _>(&values)
    .execute(&mut c)
    .await
    .unwrap();
    diesel::sql_query(
        "INSERT INTO webhooks (id, url, events, secret_encrypted)
         SELECT u.id, 'https://example.com/' || u.id, '{tenant.updated}', u.secret
           FROM unnest($1::uuid[], $2::text[]) AS u(id, secret)",
    )
    .bind::<Array<SqlUuid>, _>(&h_ids)
    .bind::<Array<Text>, _>(&h_secrets)
    .execute(&mut c)
    .await
    .unwrap();
    (configs, hooks)
}

/// Every stored secret, exactly as stored, in a stable order.
async fn stored(url: &str) -> Vec<String> {
    sql::texts(
        url,
        "SELECT t FROM (
             SELECT 'c/' || tenant_id || '/' || key || '=' || encrypted_value AS t FROM config_entries WHERE sensitive
             UNION ALL
             SELECT 'w/' || id || '=' || secret_encrypted FROM webhooks) s
          ORDER BY t",
    )
    .await
}

async fn stored_config(url: &str) -> Vec<(Uuid, String, String)> {
    sql::texts(
        url,
        "SELECT tenant_id || ' ' || key || ' ' || encrypted_value AS t FROM config_entries WHERE sensitive",
    )
    .await
    .into_iter()
    .map(|row| {
        let mut p = row.splitn(3, ' ');
        let t = Uuid::parse_str(p.next().unwrap()).unwrap();
        (t, p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
    })
    .collect()
}

async fn stored_webhooks(url: &str) -> Vec<(Uuid, String)> {
    sql::texts(
        url,
        "SELECT id || ' ' || secret_encrypted AS t FROM webhooks",
    )
    .await
    .into_iter()
    .map(|row| {
        let (id, s) = row.split_once(' ').unwrap();
        (Uuid::parse_str(id).unwrap(), s.to_owned())
    })
    .collect()
}

async fn rotations_journaled(url: &str) -> i64 {
    sql::count(
        url,
        "SELECT count(*) AS n FROM audit_logs WHERE action = 'maintenance.rotate_encryption_key'",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_of_ten_thousand_plus_ten_thousand_secrets() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let mut tenants = Vec::new();
    for i in 0..10 {
        tenants.push(tenant(url, &format!("t{i}")).await);
    }
    let (configs, hooks) = secrets(url, &tenants, 10_000).await;
    // Plain config is not touched.
    sql::exec(
        url,
        &format!(
            "INSERT INTO config_entries (tenant_id, key, value) VALUES ('{}', 'plain', '\"visible\"')",
            tenants[0]
        ),
    )
    .await;

    let r = call(
        &app,
        POST,
        ROTATE,
        Some(ADMIN),
        Some(json!({"old_key": ENCRYPTION_KEY, "new_key": NEW_KEY})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"config_entries_rotated": 10_000, "webhooks_rotated": 10_000})
    );

    // Every value decrypts with the new key, and only with it, to its original.
    let new = key(NEW_KEY);
    let rows = stored_config(url).await;
    assert_eq!(rows.len(), 10_000);
    for (t, k, v) in rows {
        assert_eq!(envelope_key_id(&v), Some(new.key_id()));
        assert_eq!(new.decrypt_str(&v).unwrap(), configs[&(t, k)]);
        assert!(key(ENCRYPTION_KEY).decrypt(&v).is_err());
    }
    let rows = stored_webhooks(url).await;
    assert_eq!(rows.len(), 10_000);
    for (id, s) in rows {
        assert_eq!(envelope_key_id(&s), Some(new.key_id()));
        assert_eq!(new.decrypt_str(&s).unwrap(), hooks[&id]);
    }
    assert_eq!(
        sql::texts(
            url,
            "SELECT value::text AS t FROM config_entries WHERE NOT sensitive"
        )
        .await,
        vec!["\"visible\"".to_owned()]
    );

    // The process uses the new key at once: reads decrypt, writes encrypt with it.
    let t0 = tenants[0];
    let cfg = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t0}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(cfg.status, StatusCode::OK);
    let expected: Value = serde_json::from_str(&configs[&(t0, "secret.0".to_owned())]).unwrap();
    assert_eq!(cfg.body["secret.0"]["value"], expected);
    assert_eq!(cfg.body["secret.10"]["sensitive"], true);
    let put = call(
        &app,
        PUT,
        &format!("/api/v1/tenants/{t0}/config/fresh"),
        Some(ADMIN),
        Some(json!({"value": "after-rotation", "sensitive": true})),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let fresh = sql::texts(
        url,
        "SELECT encrypted_value AS t FROM config_entries WHERE key = 'fresh'",
    )
    .await;
    assert_eq!(envelope_key_id(&fresh[0]), Some(new.key_id()));

    // Journaled with counts and key ids, never with a key.
    let entries = call(
        &app,
        GET,
        "/api/v1/audit-logs?action=maintenance.rotate_encryption_key",
        Some(ADMIN),
        None,
    )
    .await;
    let entry = &entries.body[0];
    assert_eq!(
        entry["after_state"],
        json!({
            "old_key_id": key(ENCRYPTION_KEY).key_id(), "new_key_id": new.key_id(),
            "config_entries_rotated": 10_000, "webhooks_rotated": 10_000
        })
    );
    let leaked = sql::count(
        url,
        &format!(
            "SELECT count(*) AS n FROM audit_logs
              WHERE concat(before_state::text, after_state::text, metadata::text, resource_id) LIKE '%{ENCRYPTION_KEY}%'
                 OR concat(before_state::text, after_state::text, metadata::text, resource_id) LIKE '%{NEW_KEY}%'"
        ),
    )
    .await;
    assert_eq!(leaked, 0);

    // The old key is no longer the key in use.
    let again = call(
        &app,
        POST,
        ROTATE,
        Some(ADMIN),
        Some(json!({"old_key": ENCRYPTION_KEY, "new_key": "yet-another-key-0123456789abcdefghij"})),
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::BAD_REQUEST, "INVALID_OLD_KEY")
    );
    assert_eq!(rotations_journaled(url).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_old_key_changes_nothing() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let t = tenant(url, "acme").await;
    secrets(url, &[t], 200).await;
    let before = stored(url).await;
    for old in ["not-the-key-in-use-0123456789abcdefghij", "short", NEW_KEY] {
        let r = call(
            &app,
            POST,
            ROTATE,
            Some(ADMIN),
            Some(json!({"old_key": old, "new_key": "a-brand-new-key-0123456789abcdefghij"})),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "INVALID_OLD_KEY"),
            "{old}"
        );
        assert!(!r.body.to_string().contains(old));
    }
    assert_eq!(stored(url).await, before);
    assert_eq!(rotations_journaled(url).await, 0);
    // The process still reads with the old key.
    let cfg = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(cfg.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_validates_its_body() {
    let h = harness().await;
    let app = app!(h);
    for (body, field) in [
        (
            json!({"old_key": ENCRYPTION_KEY, "new_key": "short"}),
            Some("new_key"),
        ),
        (
            json!({"old_key": ENCRYPTION_KEY, "new_key": "x".repeat(31)}),
            Some("new_key"),
        ),
        (
            json!({"old_key": ENCRYPTION_KEY, "new_key": ENCRYPTION_KEY}),
            Some("new_key"),
        ),
        (json!({"old_key": ENCRYPTION_KEY}), None),
        (json!({"new_key": NEW_KEY}), None),
        (json!({"old_key": ENCRYPTION_KEY, "new_key": 42}), None),
        (
            json!({"old_key": ENCRYPTION_KEY, "new_key": NEW_KEY, "extra": 1}),
            None,
        ),
    ] {
        let r = call(&app, POST, ROTATE, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            "{body}"
        );
        if let Some(f) = field {
            assert_eq!(r.body["error"]["details"][0]["field"], f, "{body}");
        }
        assert!(!r.body.to_string().contains(ENCRYPTION_KEY), "{}", r.body);
    }
    let r = call_raw(&app, POST, ROTATE, ADMIN, "application/json", Vec::new()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(rotations_journaled(&h.db.url).await, 0);
}

/// Flips one character of an envelope's payload: still an envelope, no longer authentic.
fn corrupt(envelope: &str) -> String {
    let mut s = envelope.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == 'A' { 'B' } else { 'A' });
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_value_rolls_the_whole_rotation_back() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let (good, bad) = (tenant(url, "good").await, tenant(url, "bad").await);
    let (configs, _) = secrets(url, &[good], 1000).await;
    let old = key(ENCRYPTION_KEY);
    let body = json!({"old_key": ENCRYPTION_KEY, "new_key": NEW_KEY});

    // A corrupt webhook secret among 1,000 good ones (sorted last, so everything before it
    // was already re-encrypted inside the transaction when it fails).
    let broken_hook = webhook(url, &corrupt(&old.encrypt_str("whsec_broken").unwrap())).await;
    let before = stored(url).await;
    let r = call_any(&app, POST, ROTATE, Some(ADMIN), Some(body.clone())).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR")
    );
    assert_eq!(
        r.body["error"]["message"], "internal error",
        "5xx bodies stay generic"
    );
    assert_eq!(stored(url).await, before, "nothing changed");
    for (_, _, v) in stored_config(url).await {
        assert!(old.decrypt_str(&v).is_ok(), "still under the old key");
    }
    assert_eq!(rotations_journaled(url).await, 0);
    // The process kept its key: reads still work.
    let cfg = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{good}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    let expected: Value = serde_json::from_str(&configs[&(good, "secret.0".to_owned())]).unwrap();
    assert_eq!(cfg.body["secret.0"]["value"], expected);

    // Repaired, and a corrupt config value instead: the same.
    sql::exec(
        url,
        &format!(
            "UPDATE webhooks SET secret_encrypted = '{}' WHERE id = '{broken_hook}'",
            old.encrypt_str("whsec_fixed").unwrap()
        ),
    )
    .await;
    sql::exec(
        url,
        &format!(
            "INSERT INTO config_entries (tenant_id, key, encrypted_value, sensitive)
             VALUES ('{bad}', 'broken', '{}', true)",
            corrupt(&old.encrypt_str("\"x\"").unwrap())
        ),
    )
    .await;
    let before = stored(url).await;
    let r = call_any(&app, POST, ROTATE, Some(ADMIN), Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(stored(url).await, before);
    assert_eq!(rotations_journaled(url).await, 0);

    // Once the bad value is gone the rotation goes through.
    sql::exec(url, "DELETE FROM config_entries WHERE key = 'broken'").await;
    let r = call(&app, POST, ROTATE, Some(ADMIN), Some(body)).await;
    assert_eq!(
        r.body,
        json!({"config_entries_rotated": 1000, "webhooks_rotated": 1001})
    );
    let new = key(NEW_KEY);
    for (id, s) in stored_webhooks(url).await {
        let plain = new.decrypt_str(&s).unwrap();
        if id == broken_hook {
            assert_eq!(plain, "whsec_fixed");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_under_a_key_the_process_lacks_refuses_the_rotation() {
    // What a replica still on the old key sees after another one rotated.
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    webhook(url, &key(ENCRYPTION_KEY).encrypt_str("whsec_a").unwrap()).await;
    webhook(url, &key(NEW_KEY).encrypt_str("whsec_b").unwrap()).await;
    // The other replica's rotation recorded its new key as the database's active key.
    sql::exec(
        url,
        &format!(
            "INSERT INTO encryption_keys_state (singleton, active_key_id) VALUES (true, '{}')",
            key(NEW_KEY).key_id()
        ),
    )
    .await;
    let before = stored(url).await;
    let r = call(
        &app,
        POST,
        ROTATE,
        Some(ADMIN),
        Some(json!({"old_key": ENCRYPTION_KEY, "new_key": "a-third-key-0123456789abcdefghijkl"})),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "INVALID_OLD_KEY")
    );
    assert_eq!(stored(url).await, before);
}

/// Five rotations to five different keys at once, beside writers of sensitive config:
/// exactly one runs; the others answer 409 `ROTATION_IN_PROGRESS` or, once it committed,
/// 400 `INVALID_OLD_KEY`; nothing answers 5xx; afterwards every stored secret, including
/// those written meanwhile, is under the winner's key, which alone reads them all.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_rotations_beside_writers_are_linearizable() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let t = tenant(url, "acme").await;
    secrets(url, &[t], 300).await;
    let new_keys: Vec<String> = (0..5)
        .map(|i| format!("concurrent-new-key-{i}-0123456789abcdefghij"))
        .collect();

    let rotations = futures_util::future::join_all(new_keys.iter().map(|new| {
        call_any(
            &app,
            POST,
            ROTATE,
            Some(ADMIN),
            Some(json!({"old_key": ENCRYPTION_KEY, "new_key": new})),
        )
    }));
    let writers = futures_util::future::join_all((0..4).map(|w| {
        let app = &app;
        async move {
            let mut out = Vec::new();
            for i in 0..15 {
                let path = format!("/api/v1/tenants/{t}/config/written.{w}.{i}");
                let value = format!("during-rotation-{w}-{i}");
                let r = call_any(
                    app,
                    PUT,
                    &path,
                    Some(ADMIN),
                    Some(json!({"value": value, "sensitive": true})),
                )
                .await;
                out.push((
                    r.status,
                    r.body.to_string(),
                    format!("written.{w}.{i}"),
                    value,
                ));
            }
            out
        }
    }));
    let (rotations, writes) = futures_util::future::join(rotations, writers).await;

    let mut winners = Vec::new();
    for (r, new) in rotations.iter().zip(&new_keys) {
        assert!(
            !r.status.is_server_error(),
            "rotation answered {}: {}",
            r.status,
            r.body
        );
        match (r.status, r.code()) {
            (StatusCode::OK, _) => winners.push(new.clone()),
            (StatusCode::CONFLICT, "ROTATION_IN_PROGRESS")
            | (StatusCode::BAD_REQUEST, "INVALID_OLD_KEY") => {}
            other => panic!("unexpected rotation answer {other:?}: {}", r.body),
        }
    }
    let answers: Vec<String> = rotations
        .iter()
        .map(|r| format!("{} {}", r.status, r.body))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one rotation runs: {answers:?}");
    let winner = key(&winners[0]);
    let mut written = BTreeMap::new();
    for (status, body, name, value) in writes.into_iter().flatten() {
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        written.insert(name, value);
    }
    assert_eq!(written.len(), 60);

    // Every stored envelope is under the winner's key, and a keyring holding only that
    // key (what a restart with only the new key has) reads every one of them.
    let only_winner = stratum_crypto::Keyring::new(winner.clone(), None);
    let rows = stored_config(url).await;
    assert_eq!(rows.len(), 360);
    for (_, k, v) in &rows {
        assert_eq!(envelope_key_id(v), Some(winner.key_id()), "{k}");
        let plain = only_winner.decrypt_str(v).unwrap();
        if let Some(want) = written.get(k) {
            assert_eq!(plain, json!(want).to_string(), "{k}");
        }
    }
    for (id, s) in stored_webhooks(url).await {
        assert_eq!(envelope_key_id(&s), Some(winner.key_id()), "{id}");
        assert!(only_winner.decrypt_str(&s).unwrap().starts_with("whsec_"));
    }
    assert_eq!(
        sql::texts(url, "SELECT active_key_id AS t FROM encryption_keys_state").await,
        vec![winner.key_id().to_owned()]
    );
    assert_eq!(rotations_journaled(url).await, 1);

    // The process switched at once: it reads everything and writes under the winner.
    let r = call(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(
        &app,
        PUT,
        &format!("/api/v1/tenants/{t}/config/after"),
        Some(ADMIN),
        Some(json!({"value": "after", "sensitive": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let after = sql::texts(
        url,
        &format!("SELECT encrypted_value AS t FROM config_entries WHERE tenant_id = '{t}' AND key = 'after'"),
    )
    .await;
    assert_eq!(envelope_key_id(&after[0]), Some(winner.key_id()));
}

/// A process that does not hold the database's active key (another process rotated, this
/// one was never given the new key) answers 503 `ENCRYPTION_KEY_UNAVAILABLE` on reads and
/// writes of secrets, never 500, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_without_the_active_key_answers_503() {
    let h = harness().await;
    let app = app!(h);
    let url = h.db.url.as_str();
    let t = tenant(url, "acme").await;
    let under_new = key(NEW_KEY).encrypt_str("\"rotated-elsewhere\"").unwrap();
    sql::exec(
        url,
        &format!(
            "INSERT INTO config_entries (tenant_id, key, encrypted_value, sensitive)
             VALUES ('{t}', 'token', '{under_new}', true)"
        ),
    )
    .await;
    sql::exec(
        url,
        &format!(
            "INSERT INTO encryption_keys_state (singleton, active_key_id) VALUES (true, '{}')",
            key(NEW_KEY).key_id()
        ),
    )
    .await;
    let before = stored(url).await;
    let read = call_any(
        &app,
        GET,
        &format!("/api/v1/tenants/{t}/config"),
        Some(ADMIN),
        None,
    )
    .await;
    let write = call_any(
        &app,
        PUT,
        &format!("/api/v1/tenants/{t}/config/other"),
        Some(ADMIN),
        Some(json!({"value": "x", "sensitive": true})),
    )
    .await;
    let hook = call_any(
        &app,
        POST,
        "/api/v1/webhooks",
        Some(ADMIN),
        Some(json!({"url": "https://example.com/hook", "events": ["tenant.updated"]})),
    )
    .await;
    for r in [&read, &write, &hook] {
        assert_eq!(
            (r.status, r.code()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "ENCRYPTION_KEY_UNAVAILABLE"
            ),
            "{}",
            r.body
        );
        assert!(!r.body.to_string().contains(NEW_KEY));
    }
    assert_eq!(stored(url).await, before);
}
