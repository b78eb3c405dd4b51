//! `PgConsentStore` against a real PostgreSQL: one fresh database per test.
#![allow(
    clippy::unwrap_used,
    reason = "fixture helpers are test code: a failure there must fail the test"
)]

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use stratum_consent::{
    ConsentError, ConsentFilter, ConsentRecord, ConsentStore, Purpose, SubjectId,
};
use stratum_core::{Caller, Journal};
use stratum_postgres::schema::{audit_logs, consent_records, tenants, webhook_events};
use stratum_postgres::{PgConsentStore, Pool};
use stratum_testkit::TestDb;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const T0: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);

struct Fixture {
    // Dropping it drops the database: keep it alive for the whole test.
    _db: TestDb,
    pool: Pool,
    store: PgConsentStore,
    tenant: Uuid,
}

async fn fixture() -> Fixture {
    let db = TestDb::new().await;
    let pool = stratum_postgres::connect(&db.url, &Default::default()).unwrap();
    let store = PgConsentStore::new(pool.clone());
    let tenant = insert_tenant(&pool, "acme", "active").await;
    Fixture {
        _db: db,
        pool,
        store,
        tenant,
    }
}

async fn insert_tenant(pool: &Pool, slug: &str, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.unwrap();
    diesel::insert_into(tenants::table)
        .values((
            tenants::id.eq(id),
            tenants::name.eq(slug),
            tenants::slug.eq(slug),
            tenants::ancestry_path.eq(format!("/{id}/")),
            tenants::depth.eq(0),
            tenants::status.eq(status),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    id
}

fn subject(s: &str) -> SubjectId {
    SubjectId::parse(s).unwrap()
}

fn purpose(p: &str) -> Purpose {
    Purpose::parse(p).unwrap()
}

fn grant(
    tenant: Uuid,
    who: &str,
    what: &str,
    at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    metadata: Value,
) -> ConsentRecord {
    ConsentRecord {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        subject_id: subject(who),
        purpose: purpose(what),
        granted: true,
        granted_at: at,
        revoked_at: None,
        expires_at,
        metadata,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

fn journal(action: &str, r: &ConsentRecord) -> Journal {
    Caller::system()
        .journal(action, "consent")
        .resource(r.id)
        .tenant(Some(r.tenant_id))
        .after(Some(json!({"purpose": r.purpose.as_str()})))
}

/// `(action, resource_id)` of every audit entry, oldest first.
async fn audit(pool: &Pool) -> Vec<(String, Option<String>)> {
    let mut conn = pool.get().await.unwrap();
    audit_logs::table
        .order((audit_logs::created_at.asc(), audit_logs::id.asc()))
        .select((audit_logs::action, audit_logs::resource_id))
        .load(&mut conn)
        .await
        .unwrap()
}

async fn consent_rows(pool: &Pool) -> i64 {
    let mut conn = pool.get().await.unwrap();
    consent_records::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_regrant_and_revoke_keep_one_record() {
    let f = fixture().await;
    let first = grant(
        f.tenant,
        "user-1",
        "marketing",
        T0,
        Some(T0 + Duration::days(30)),
        json!({"source": "signup"}),
    );
    let created = f
        .store
        .upsert_grant(first.clone(), None, journal("consent.granted", &first))
        .await
        .unwrap();
    assert!(created, "the first grant inserts");
    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("marketing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, first);

    let revoke_at = T0 + Duration::hours(1);
    let revoked = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("marketing"),
            first.version,
            revoke_at,
            journal("consent.revoked", &first),
        )
        .await
        .unwrap();
    assert_eq!(revoked.id, first.id);
    assert_eq!(
        revoked.version,
        first.version + 1,
        "a revoke bumps the version"
    );
    assert_eq!(revoked.revoked_at, Some(revoke_at));
    assert!(!revoked.granted);
    assert_eq!(revoked.updated_at, revoke_at);
    assert!(!f
        .store
        .is_granted(f.tenant, subject("user-1"), purpose("marketing"), revoke_at)
        .await
        .unwrap());

    // Re-grant: the service passes the existing id and created_at.
    let regrant_at = T0 + Duration::hours(2);
    let again = ConsentRecord {
        granted_at: regrant_at,
        updated_at: regrant_at,
        expires_at: Some(T0 + Duration::days(90)),
        metadata: json!({"source": "settings"}),
        version: revoked.version + 1,
        ..first.clone()
    };
    let created = f
        .store
        .upsert_grant(
            again.clone(),
            Some(revoked.version),
            journal("consent.granted", &again),
        )
        .await
        .unwrap();
    assert!(!created, "a re-grant updates");
    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("marketing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id, first.id);
    assert_eq!(stored.created_at, T0, "created_at survives re-grants");
    assert_eq!(stored.granted_at, regrant_at);
    assert_eq!(
        stored.expires_at,
        Some(T0 + Duration::days(90)),
        "expiry replaced"
    );
    assert_eq!(stored.revoked_at, None, "revocation cleared");
    assert!(stored.granted);
    assert_eq!(stored.metadata, json!({"source": "settings"}));
    assert_eq!(
        stored.version,
        revoked.version + 1,
        "a re-grant bumps the version"
    );
    assert_eq!(stored, again);
    assert_eq!(consent_rows(&f.pool).await, 1);

    // Revoking twice: the second finds no active grant.
    let revoked_again = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("marketing"),
            stored.version,
            regrant_at + Duration::minutes(1),
            journal("consent.revoked", &first),
        )
        .await
        .unwrap();
    assert_eq!(revoked_again.version, stored.version + 1);
    let err = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("marketing"),
            revoked_again.version,
            regrant_at + Duration::minutes(2),
            journal("consent.revoked", &first),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::NotFound), "{err:?}");

    // Exactly one audit entry per successful grant and revoke, none for the failure,
    // and no webhook event: consent is not a delivered event.
    let id = Some(first.id.to_string());
    assert_eq!(
        audit(&f.pool).await,
        vec![
            ("consent.granted".to_owned(), id.clone()),
            ("consent.revoked".to_owned(), id.clone()),
            ("consent.granted".to_owned(), id.clone()),
            ("consent.revoked".to_owned(), id),
        ]
    );
    let mut conn = f.pool.get().await.unwrap();
    let events: i64 = webhook_events::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_grant_cannot_be_revoked_and_is_not_granted() {
    let f = fixture().await;
    let expires = T0 + Duration::hours(1);
    let r = grant(
        f.tenant,
        "user-1",
        "analytics",
        T0,
        Some(expires),
        json!({}),
    );
    assert!(f
        .store
        .upsert_grant(r.clone(), None, journal("consent.granted", &r))
        .await
        .unwrap());
    let is_granted = |at| {
        f.store
            .is_granted(f.tenant, subject("user-1"), purpose("analytics"), at)
    };
    assert!(is_granted(T0 + Duration::minutes(59)).await.unwrap());
    assert!(!is_granted(expires).await.unwrap(), "expired at its expiry");
    assert!(!is_granted(T0 + Duration::hours(2)).await.unwrap());

    let err = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("analytics"),
            r.version,
            T0 + Duration::hours(2),
            journal("consent.revoked", &r),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::NotFound), "{err:?}");
    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("analytics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.revoked_at, None, "a failed revoke changes nothing");
    assert_eq!(audit(&f.pool).await.len(), 1, "only the grant is audited");

    // Other subjects, purposes and tenants are separate.
    assert!(!f
        .store
        .is_granted(f.tenant, subject("user-2"), purpose("analytics"), T0)
        .await
        .unwrap());
    assert!(!f
        .store
        .is_granted(f.tenant, subject("user-1"), purpose("marketing"), T0)
        .await
        .unwrap());
    assert!(!f
        .store
        .is_granted(Uuid::now_v7(), subject("user-1"), purpose("analytics"), T0)
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_need_an_active_tenant() {
    let f = fixture().await;
    let archived = insert_tenant(&f.pool, "gone", "archived").await;
    for tenant in [archived, Uuid::now_v7()] {
        let r = grant(tenant, "user-1", "marketing", T0, None, json!({}));
        let err = f
            .store
            .upsert_grant(r.clone(), None, journal("consent.granted", &r))
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::TenantNotFound), "{err:?}");
    }
    assert_eq!(consent_rows(&f.pool).await, 0);
    assert!(
        audit(&f.pool).await.is_empty(),
        "a rolled-back grant leaves no audit entry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_first_grant_is_reported_not_overwritten() {
    let f = fixture().await;
    let winner = grant(
        f.tenant,
        "user-1",
        "marketing",
        T0,
        None,
        json!({"who": "winner"}),
    );
    assert!(f
        .store
        .upsert_grant(winner.clone(), None, journal("consent.granted", &winner))
        .await
        .unwrap());
    // A request that read "no record" before the winner committed carries a new id.
    let loser = grant(
        f.tenant,
        "user-1",
        "marketing",
        T0 + Duration::seconds(1),
        Some(T0 + Duration::days(1)),
        json!({"who": "loser"}),
    );
    let err = f
        .store
        .upsert_grant(loser.clone(), None, journal("consent.granted", &loser))
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)), "{err:?}");
    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("marketing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, winner, "the loser changed nothing");
    assert_eq!(audit(&f.pool).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_orders() {
    let f = fixture().await;
    let other_tenant = insert_tenant(&f.pool, "other", "active").await;
    let at = |mins: i64| T0 + Duration::minutes(mins);
    let records = [
        grant(f.tenant, "alice", "marketing", at(0), None, json!({})),
        grant(
            f.tenant,
            "alice",
            "analytics",
            at(1),
            Some(at(30)),
            json!({}),
        ),
        grant(f.tenant, "bob", "marketing", at(2), None, json!({})),
        grant(f.tenant, "carol", "marketing", at(3), None, json!({})),
        grant(other_tenant, "alice", "marketing", at(4), None, json!({})),
    ];
    for r in &records {
        assert!(f
            .store
            .upsert_grant(r.clone(), None, journal("consent.granted", r))
            .await
            .unwrap());
    }
    f.store
        .revoke(
            f.tenant,
            subject("carol"),
            purpose("marketing"),
            records[3].version,
            at(10),
            journal("consent.revoked", &records[3]),
        )
        .await
        .unwrap();

    let ids = |rs: Vec<ConsentRecord>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let list = |filter: ConsentFilter| f.store.list(f.tenant, filter);

    // Newest first, this tenant only.
    let all = ids(list(ConsentFilter::default()).await.unwrap());
    assert_eq!(
        all,
        vec![records[3].id, records[2].id, records[1].id, records[0].id]
    );
    let alice = ids(list(ConsentFilter {
        subject_id: Some(subject("alice")),
        ..ConsentFilter::default()
    })
    .await
    .unwrap());
    assert_eq!(alice, vec![records[1].id, records[0].id]);
    let marketing = ids(list(ConsentFilter {
        purpose: Some(purpose("marketing")),
        ..ConsentFilter::default()
    })
    .await
    .unwrap());
    assert_eq!(marketing, vec![records[3].id, records[2].id, records[0].id]);

    // At minute 40 carol is revoked and alice's analytics grant has expired.
    let active = ids(list(ConsentFilter {
        active_at: Some(at(40)),
        ..ConsentFilter::default()
    })
    .await
    .unwrap());
    assert_eq!(active, vec![records[2].id, records[0].id]);
    let inactive = ids(list(ConsentFilter {
        inactive_at: Some(at(40)),
        ..ConsentFilter::default()
    })
    .await
    .unwrap());
    assert_eq!(inactive, vec![records[3].id, records[1].id]);
    // Before its expiry the analytics grant is active; a revocation counts whatever the instant.
    let active_early = ids(list(ConsentFilter {
        active_at: Some(at(5)),
        ..ConsentFilter::default()
    })
    .await
    .unwrap());
    assert_eq!(
        active_early,
        vec![records[2].id, records[1].id, records[0].id]
    );
    let combined = ids(list(ConsentFilter {
        subject_id: Some(subject("alice")),
        purpose: Some(purpose("analytics")),
        active_at: Some(at(40)),
        inactive_at: None,
    })
    .await
    .unwrap());
    assert!(combined.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_at_a_stale_version_are_conflicts_and_change_nothing() {
    let f = fixture().await;
    let first = grant(
        f.tenant,
        "user-1",
        "marketing",
        T0,
        None,
        json!({"source": "signup"}),
    );
    assert!(f
        .store
        .upsert_grant(first.clone(), None, journal("consent.granted", &first))
        .await
        .unwrap());

    // A re-grant that read another version than the stored one.
    let regrant = ConsentRecord {
        granted_at: T0 + Duration::hours(1),
        updated_at: T0 + Duration::hours(1),
        metadata: json!({"source": "stale"}),
        version: first.version + 5,
        ..first.clone()
    };
    let err = f
        .store
        .upsert_grant(
            regrant.clone(),
            Some(first.version + 4),
            journal("consent.granted", &regrant),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)), "{err:?}");

    // A re-grant where the service read "no record" (expected None) but one exists.
    let err = f
        .store
        .upsert_grant(regrant.clone(), None, journal("consent.granted", &regrant))
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)), "{err:?}");

    // A revoke of the active grant at another version: a conflict, not "not found".
    let err = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("marketing"),
            first.version + 1,
            T0 + Duration::hours(2),
            journal("consent.revoked", &first),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)), "{err:?}");

    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("marketing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, first, "nothing changed");
    assert_eq!(
        audit(&f.pool).await,
        vec![("consent.granted".to_owned(), Some(first.id.to_string()))],
        "failed writes leave no audit entry"
    );

    // At the current version both succeed.
    let revoked = f
        .store
        .revoke(
            f.tenant,
            subject("user-1"),
            purpose("marketing"),
            first.version,
            T0 + Duration::hours(2),
            journal("consent.revoked", &first),
        )
        .await
        .unwrap();
    assert_eq!(revoked.version, first.version + 1);
    let regrant = ConsentRecord {
        version: revoked.version + 1,
        ..regrant
    };
    assert!(!f
        .store
        .upsert_grant(
            regrant.clone(),
            Some(revoked.version),
            journal("consent.granted", &regrant),
        )
        .await
        .unwrap());
    let stored = f
        .store
        .find(f.tenant, subject("user-1"), purpose("marketing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, regrant);
}
