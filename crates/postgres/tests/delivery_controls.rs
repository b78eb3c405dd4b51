//! Delivery controls against a real PostgreSQL: the circuit breaker shared by every worker,
//! auto-disable, per-webhook rate limits, FIFO lanes and secret rotation with overlap.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use stratum_core::{Caller, Journal};
use stratum_postgres::{connect, PgDeliveryQueue, PgWebhookStore, Pool};
use stratum_testkit::sql::{count, exec, texts};
use stratum_testkit::TestDb;
use stratum_webhooks::{
    AttemptOutcome, BreakerConfig, ClaimedDelivery, Completion, DeliveryQueue, Verdict,
    WebhookStore,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// The one text column `t` of the first row.
async fn text(url: &str, q: &str) -> String {
    texts(url, q).await.remove(0)
}

/// A webhook subscribed to `tenant.updated`, with extra column settings (`, col = value`).
async fn webhook(url: &str, settings: &str) -> Uuid {
    let id = Uuid::now_v7();
    exec(
        url,
        &format!(
            "INSERT INTO webhooks (id, url, events, secret_encrypted)
             VALUES ('{id}', 'https://example.com/{id}', '{{tenant.updated}}', 'v1:x:y');
             UPDATE webhooks SET version = version {settings} WHERE id = '{id}'"
        ),
    )
    .await;
    id
}

/// `n` events fanned out by the journal function, one transaction each, in order.
async fn publish(url: &str, n: usize) {
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    for i in 0..n {
        diesel::sql_query(format!(
            "SELECT stratum_record(stratum_uuid_v7(), NULL, 'k', 'api_key', 'tenant.updated', 'tenant', 'r',
                                   NULL, NULL, '{{}}', stratum_uuid_v7(), 'tenant.updated', NULL,
                                   jsonb_build_object('n', {i}), NULL, false)"
        ))
        .execute(&mut c)
        .await
        .unwrap();
    }
}

fn pool(db: &TestDb) -> Pool {
    connect(&db.url, &Default::default()).unwrap()
}

fn result(d: &ClaimedDelivery, status: u16, verdict: Verdict) -> Completion {
    Completion {
        delivery_id: d.id,
        event_id: d.event_id,
        lease_id: d.lease_id,
        webhook_id: d.webhook_id,
        attempt: d.attempts + 1,
        outcome: AttemptOutcome {
            status: Some(status),
            duration_ms: 3,
            ..Default::default()
        },
        verdict,
    }
}

fn retry_now() -> Verdict {
    Verdict::Retry {
        at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
    }
}

const LEASE: Duration = Duration::from_secs(60);

fn breaker(threshold: u32, disable_after: Option<Duration>) -> BreakerConfig {
    BreakerConfig {
        threshold,
        cooldown: Duration::from_secs(30),
        cooldown_max: Duration::from_secs(600),
        disable_after,
    }
}

async fn claim(q: &PgDeliveryQueue) -> Vec<ClaimedDelivery> {
    q.claim(256, 256, Vec::new(), LEASE).await.unwrap()
}

async fn fail_all(q: &PgDeliveryQueue, batch: &[ClaimedDelivery]) {
    let done: Vec<Completion> = batch.iter().map(|d| result(d, 503, retry_now())).collect();
    assert_eq!(q.complete(done).await.unwrap(), batch.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_at_the_threshold_lets_one_probe_through_and_closes_on_success() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db)).with_breaker(breaker(5, None));
    let w = webhook(&db.url, "").await;
    publish(&db.url, 12).await;

    // Four failures leave it closed; the fifth opens it.
    let first = claim(&q).await;
    assert_eq!(first.len(), 12);
    fail_all(&q, &first[..4]).await;
    let state = format!("SELECT state AS t FROM webhook_controls WHERE webhook_id = '{w}'");
    assert_eq!(text(&db.url, &state).await, "closed");
    fail_all(&q, &first[4..5]).await;
    assert_eq!(text(&db.url, &state).await, "open");
    // The rest of the first claim was in flight when it opened: their results still count.
    fail_all(&q, &first[5..]).await;
    let failures = format!(
        "SELECT consecutive_failures::bigint AS n FROM webhook_controls WHERE webhook_id = '{w}'"
    );
    assert_eq!(count(&db.url, &failures).await, 12);

    // Open: every delivery is due, none is claimed, none spends an attempt.
    assert!(claim(&q).await.is_empty());
    let attempts = format!(
        "SELECT sum(attempts)::bigint AS n FROM webhook_deliveries WHERE webhook_id = '{w}'"
    );
    assert_eq!(count(&db.url, &attempts).await, 12);

    // The cool-down ends: exactly one probe, even for two claimers at once.
    exec(&db.url, &format!("UPDATE webhook_controls SET next_probe_at = now() - interval '1 second' WHERE webhook_id = '{w}'")).await;
    let (a, b) = tokio::join!(claim(&q), claim(&q));
    assert_eq!(a.len() + b.len(), 1, "one probe");
    assert_eq!(text(&db.url, &state).await, "half_open");
    assert!(claim(&q).await.is_empty(), "nothing beside the probe");
    let probe = a.into_iter().chain(b).next().unwrap();

    // The probe succeeds: closed, and the backlog flows again.
    q.complete(vec![result(&probe, 200, Verdict::Success)])
        .await
        .unwrap();
    assert_eq!(text(&db.url, &state).await, "closed");
    assert_eq!(count(&db.url, &failures).await, 0);
    assert_eq!(claim(&q).await.len(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_probe_reopens_for_twice_as_long_and_a_long_open_breaker_disables_the_webhook() {
    let db = TestDb::new().await;
    let tenant = Uuid::now_v7();
    exec(&db.url, &format!("INSERT INTO tenants (id, name, slug, ancestry_path, depth) VALUES ('{tenant}', 'Acme', 'acme', '/{tenant}/', 0)")).await;
    let q =
        PgDeliveryQueue::new(pool(&db)).with_breaker(breaker(1, Some(Duration::from_millis(1))));
    let w = webhook(&db.url, &format!(", tenant_id = '{tenant}'")).await;
    // A second webhook of the tenant hears about the first one being disabled.
    let listener = webhook(
        &db.url,
        &format!(", tenant_id = '{tenant}', events = '{{webhook.disabled}}'"),
    )
    .await;
    exec(
        &db.url,
        &format!(
            "INSERT INTO webhook_events (id, event_type, tenant_id, payload) VALUES (stratum_uuid_v7(), 'tenant.updated', '{tenant}', '{{}}');
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id)
             SELECT stratum_uuid_v7(), '{w}', id, 'tenant.updated', '{tenant}' FROM webhook_events"
        ),
    )
    .await;
    let first = claim(&q).await;
    assert_eq!(first.len(), 1);
    // Opened by the first failure; 1 ms is not over yet at that very completion.
    q.complete(vec![result(&first[0], 500, retry_now())])
        .await
        .unwrap();
    let active = format!("SELECT count(*) AS n FROM webhooks WHERE id = '{w}' AND active");
    exec(&db.url, &format!("UPDATE webhook_controls SET next_probe_at = now() - interval '1 second' WHERE webhook_id = '{w}'")).await;
    let probe = claim(&q).await;
    assert_eq!(probe.len(), 1);
    // The probe fails long after the breaker opened: the webhook is disabled.
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.complete(vec![result(&probe[0], 500, retry_now())])
        .await
        .unwrap();
    assert_eq!(count(&db.url, &active).await, 0);
    assert_eq!(
        text(
            &db.url,
            &format!("SELECT disabled_reason AS t FROM webhooks WHERE id = '{w}'")
        )
        .await,
        "failing"
    );
    let cooldown =
        format!("SELECT cooldown_ms AS n FROM webhook_controls WHERE webhook_id = '{w}'");
    assert_eq!(
        count(&db.url, &cooldown).await,
        60_000,
        "doubled after the failed probe"
    );
    // Audited by the system, with the event to the tenant's other webhook only.
    assert_eq!(
        text(&db.url, &format!("SELECT actor_type || ':' || actor_id AS t FROM audit_logs WHERE action = 'webhook.disabled' AND resource_id = '{w}'")).await,
        format!("{}:{}", Caller::system().actor.kind_name(), Caller::system().actor.id())
    );
    assert_eq!(
        count(&db.url, "SELECT count(*) AS n FROM webhook_events WHERE event_type = 'webhook.disabled' AND payload->>'disabled_reason' = 'failing' AND NOT payload ? 'secret'").await,
        1
    );
    assert_eq!(count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE event_type = 'webhook.disabled' AND webhook_id = '{listener}'")).await, 1);
    assert_eq!(count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE event_type = 'webhook.disabled' AND webhook_id = '{w}'")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_with_reason_gone_and_the_disabled_event() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = webhook(&db.url, "").await;
    let listener = webhook(&db.url, ", events = '{webhook.disabled}'").await;
    publish(&db.url, 1).await;
    let d = claim(&q).await;
    q.complete(vec![result(&d[0], 410, Verdict::Gone)])
        .await
        .unwrap();
    assert_eq!(
        text(
            &db.url,
            &format!("SELECT disabled_reason AS t FROM webhooks WHERE id = '{w}' AND NOT active")
        )
        .await,
        "gone"
    );
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'webhook.disabled'"
        )
        .await,
        1
    );
    assert_eq!(count(&db.url, &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE event_type = 'webhook.disabled' AND webhook_id = '{listener}'")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_paces_claims_across_claimers() {
    let db = TestDb::new().await;
    let w = webhook(&db.url, ", rate_limit_per_second = 10").await;
    publish(&db.url, 50).await;
    let (qa, qb) = (
        PgDeliveryQueue::new(pool(&db)),
        PgDeliveryQueue::new(pool(&db)),
    );
    // Two workers claiming at once get ten slots in the coming second between them.
    let (a, b) = tokio::join!(claim(&qa), claim(&qb));
    let mut slots: Vec<OffsetDateTime> =
        a.iter().chain(&b).map(|d| d.not_before.unwrap()).collect();
    assert_eq!(slots.len(), 10);
    assert!(a.iter().chain(&b).all(|d| d.webhook_id == w));
    slots.sort();
    for pair in slots.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= time::Duration::milliseconds(99),
            "slots 1/N s apart: {gap}"
        );
    }
    // The coming second is spent: nothing more now.
    assert!(claim(&qa).await.is_empty());
    // Any one-second window holds at most N slots, also across later claims.
    exec(&db.url, &format!("UPDATE webhook_controls SET rate_next_at = rate_next_at - interval '1 second' WHERE webhook_id = '{w}'")).await;
    let more = claim(&qb).await;
    assert_eq!(more.len(), 10);
    let first_new = more.iter().map(|d| d.not_before.unwrap()).min().unwrap();
    assert!(
        first_new
            >= *slots.last().unwrap() - time::Duration::seconds(1)
                + time::Duration::milliseconds(99)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_lane_sends_one_at_a_time_in_commit_order_and_a_failing_head_holds_it() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = webhook(&db.url, ", ordering = 'fifo'").await;
    let other = webhook(&db.url, "").await;
    publish(&db.url, 5).await;
    let n_of = |d: &ClaimedDelivery| d.payload["n"].as_i64().unwrap();

    let batch = claim(&q).await;
    let lane: Vec<&ClaimedDelivery> = batch.iter().filter(|d| d.webhook_id == w).collect();
    assert_eq!(lane.len(), 1, "one in flight");
    assert!(lane[0].fifo);
    assert_eq!(n_of(lane[0]), 0);
    assert_eq!(batch.iter().filter(|d| d.webhook_id == other).count(), 5);
    assert!(claim(&q).await.is_empty(), "the lane is busy");

    // The head fails and is due again later: it holds the lane.
    let head = lane[0].clone();
    q.complete(vec![result(
        &head,
        500,
        Verdict::Retry {
            at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        },
    )])
    .await
    .unwrap();
    assert!(
        claim(&q).await.is_empty(),
        "the failing head holds the lane"
    );
    exec(
        &db.url,
        &format!(
            "UPDATE webhook_deliveries SET next_retry_at = now() WHERE id = '{}'",
            head.id
        ),
    )
    .await;
    let again = claim(&q).await;
    assert_eq!((again.len(), again[0].id), (1, head.id));
    // Dead-lettered, it lets the next one go; retried by hand, it joins at the end.
    q.complete(vec![result(&again[0], 500, Verdict::Failed)])
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..2 {
        let d = claim(&q).await;
        assert_eq!(d.len(), 1);
        order.push(n_of(&d[0]));
        q.complete(vec![result(&d[0], 200, Verdict::Success)])
            .await
            .unwrap();
    }
    let store = stratum_postgres::PgDeliveryStore::new(pool(&db));
    stratum_webhooks::DeliveryStore::retry(
        &store,
        head.id,
        Caller::system().journal("delivery.retried", "delivery"),
    )
    .await
    .unwrap();
    loop {
        let d = claim(&q).await;
        if d.is_empty() {
            break;
        }
        assert_eq!(d.len(), 1);
        order.push(n_of(&d[0]));
        q.complete(vec![result(&d[0], 200, Verdict::Success)])
            .await
            .unwrap();
    }
    assert_eq!(order, vec![1, 2, 3, 4, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_head_hands_its_lane_over_in_the_transaction_that_records_it() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db)).with_breaker(breaker(10, None));
    let w = webhook(&db.url, ", ordering = 'fifo'").await;
    let other = webhook(&db.url, "").await;
    publish(&db.url, 4).await;
    exec(
        &db.url,
        &format!("UPDATE webhook_controls SET consecutive_failures = 3 WHERE webhook_id = '{w}'"),
    )
    .await;
    let n_of = |d: &ClaimedDelivery| d.payload["n"].as_i64().unwrap();
    let batch = claim(&q).await;
    let mut head = batch.iter().find(|d| d.webhook_id == w).unwrap().clone();
    assert_eq!(n_of(&head), 0);

    let mut order = vec![n_of(&head)];
    loop {
        let (applied, next) = q
            .complete_and_claim_next(result(&head, 200, Verdict::Success), LEASE)
            .await
            .unwrap();
        assert!(applied);
        let Some(next) = next else { break };
        // Leased to the caller, and the lane's only delivery out: a claim finds nothing.
        assert_eq!((next.webhook_id, next.fifo), (w, true));
        assert_eq!(
            text(
                &db.url,
                &format!(
                    "SELECT lease_id::text AS t FROM webhook_deliveries WHERE id = '{}'",
                    next.id
                ),
            )
            .await,
            next.lease_id.to_string()
        );
        assert!(claim(&q).await.is_empty(), "the lane is busy");
        order.push(n_of(&next));
        head = next;
    }
    assert_eq!(order, vec![0, 1, 2, 3]);
    let q_succeeded = format!(
        "SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{w}' AND status = 'success'"
    );
    assert_eq!(count(&db.url, &q_succeeded).await, 4);
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT count(*) AS n FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = '{w}'"),
        )
        .await,
        4,
        "one attempt recorded per delivery"
    );
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT consecutive_failures::bigint AS n FROM webhook_controls WHERE webhook_id = '{w}'"),
        )
        .await,
        0,
        "the success reset the breaker's count"
    );
    // The other webhook's deliveries were never handed over.
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{other}' AND status = 'pending'"),
        )
        .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_whose_lease_was_lost_hands_nothing_over() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = webhook(&db.url, ", ordering = 'fifo'").await;
    publish(&db.url, 2).await;
    let head = claim(&q).await.remove(0);
    // Its lease ran out and another worker holds it now.
    exec(
        &db.url,
        &format!(
            "UPDATE webhook_deliveries SET lease_id = gen_random_uuid(), lease_expires_at = now() + interval '1 minute' WHERE id = '{}'",
            head.id
        ),
    )
    .await;
    let (applied, next) = q
        .complete_and_claim_next(result(&head, 200, Verdict::Success), LEASE)
        .await
        .unwrap();
    assert!(!applied);
    assert!(next.is_none(), "the head is still out: the lane stays held");
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = '{w}' AND status = 'pending'"),
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_claiming_and_handing_over_one_lane_keep_one_in_flight_in_order() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let db = TestDb::new().await;
    let w = webhook(&db.url, ", ordering = 'fifo'").await;
    let total = 60;
    publish(&db.url, total).await;
    let out = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let q = PgDeliveryQueue::new(pool(&db));
        let (out, most, order) = (Arc::clone(&out), Arc::clone(&most), Arc::clone(&order));
        workers.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 50 {
                let batch = q.claim(8, 8, Vec::new(), LEASE).await.unwrap();
                let Some(mut d) = batch.into_iter().find(|d| d.webhook_id == w) else {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                idle = 0;
                loop {
                    let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    order.lock().unwrap().push(d.payload["n"].as_i64().unwrap());
                    tokio::task::yield_now().await;
                    out.fetch_sub(1, Ordering::SeqCst);
                    let (applied, next) = q
                        .complete_and_claim_next(result(&d, 200, Verdict::Success), LEASE)
                        .await
                        .unwrap();
                    assert!(applied);
                    match next {
                        Some(n) => d = n,
                        None => break,
                    }
                }
            }
        }));
    }
    for t in workers {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let want: Vec<i64> = (0..i64::try_from(total).unwrap()).collect();
    assert_eq!(order, want, "every delivery once, in commit order");
    assert_eq!(
        AtomicUsize::load(&most, Ordering::SeqCst),
        1,
        "never two of the lane out at once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_to_fifo_puts_waiting_deliveries_in_the_lane_in_creation_order() {
    let db = TestDb::new().await;
    let q = PgDeliveryQueue::new(pool(&db));
    let w = webhook(&db.url, "").await;
    publish(&db.url, 4).await;
    let store = PgWebhookStore::new(pool(&db));
    let (mut hook, _) = store.get(w).await.unwrap().unwrap();
    hook.ordering = stratum_webhooks::DeliveryOrdering::Fifo;
    let version = hook.version;
    store
        .update(
            hook,
            version,
            None,
            Caller::system().journal("webhook.updated", "webhook"),
        )
        .await
        .unwrap();
    let mut order = Vec::new();
    loop {
        let d = claim(&q).await;
        if d.is_empty() {
            break;
        }
        assert_eq!(d.len(), 1);
        order.push(d[0].payload["n"].as_i64().unwrap());
        q.complete(vec![result(&d[0], 200, Verdict::Success)])
            .await
            .unwrap();
    }
    assert_eq!(order, vec![0, 1, 2, 3]);
}

fn journal() -> Journal {
    Caller::system().journal("webhook.secret_rotated", "webhook")
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_the_replaced_secret_until_it_expires_and_at_most_ten() {
    let db = TestDb::new().await;
    let key = stratum_crypto::EncryptionKey::derive("k".repeat(32).as_str()).unwrap();
    let keyring = stratum_crypto::Keyring::new(key, None);
    let sealed = |s: &str| keyring.encrypt_str(s).unwrap();
    let w = webhook(&db.url, "").await;
    exec(
        &db.url,
        &format!(
            "UPDATE webhooks SET secret_encrypted = '{}' WHERE id = '{w}'",
            sealed("secret-number-00")
        ),
    )
    .await;
    let store = PgWebhookStore::new(pool(&db));
    let now = OffsetDateTime::now_utc();
    let now = now.replace_microsecond(now.microsecond()).unwrap();
    let mut version = 1;
    for i in 1..=12 {
        let after = store
            .rotate_secret(
                w,
                version,
                sealed(&format!("secret-number-{i:02}")),
                now + time::Duration::hours(i),
                now,
                journal(),
            )
            .await
            .unwrap();
        version = after.version;
        assert_eq!(
            after.previous_secret_expires_at,
            Some(now + time::Duration::hours(i))
        );
    }
    // A stale version writes nothing.
    assert!(matches!(
        store
            .rotate_secret(
                w,
                version - 1,
                sealed("late-secret-000000"),
                now,
                now,
                journal()
            )
            .await,
        Err(stratum_webhooks::WebhookError::Stale)
    ));
    publish(&db.url, 1).await;
    let d = claim(&PgDeliveryQueue::new(pool(&db))).await;
    assert_eq!(
        keyring.decrypt_str(&d[0].secret_encrypted).unwrap(),
        "secret-number-12"
    );
    let previous: Vec<String> = d[0]
        .previous_secrets
        .iter()
        .map(|p| keyring.decrypt_str(&p.secret_encrypted).unwrap())
        .collect();
    let expected: Vec<String> = (2..=11)
        .rev()
        .map(|i| format!("secret-number-{i:02}"))
        .collect();
    assert_eq!(previous, expected, "newest first, the oldest gone");
    // A zero grace period drops the replaced secret at once, and expired ones go too.
    let later = now + time::Duration::hours(5) + time::Duration::minutes(30);
    let after = store
        .rotate_secret(
            w,
            version,
            sealed("secret-number-13"),
            later,
            later,
            journal(),
        )
        .await
        .unwrap();
    assert_eq!(
        after.previous_secret_expires_at,
        Some(now + time::Duration::hours(12))
    );
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT cardinality(previous_secrets)::bigint AS n FROM webhooks WHERE id = '{w}'"
            )
        )
        .await,
        7,
        "those expiring at hours 6 to 12 are left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_rotations_each_keep_the_secret_they_replaced() {
    let db = TestDb::new().await;
    let w = webhook(&db.url, "").await;
    let store = PgWebhookStore::new(pool(&db));
    let now = OffsetDateTime::now_utc();
    let key = stratum_crypto::EncryptionKey::derive("k".repeat(32).as_str()).unwrap();
    // Eight rotations race on one version: exactly one wins, the rest are stale.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let sealed = key.encrypt_str(&format!("new-secret-number-{i}")).unwrap();
            tokio::spawn(async move {
                store
                    .rotate_secret(w, 1, sealed, now + time::Duration::hours(1), now, journal())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(stratum_webhooks::WebhookError::Stale) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        text(
            &db.url,
            &format!("SELECT previous_secrets[1] AS t FROM webhooks WHERE id = '{w}'")
        )
        .await,
        "v1:x:y"
    );
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'webhook.secret_rotated'"
        )
        .await,
        1
    );
}
