//! The active encryption key on a real PostgreSQL: rotations run one at a time and check the
//! active key inside their transaction; a secret under a superseded key cannot commit, and a
//! writer of secrets waits for a rotation in flight. One fresh database per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "fixture helpers are test code: a failure there must fail the test"
)]

use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use stratum_core::{Caller, StoreError};
use stratum_crypto::EncryptionKey;
use stratum_maintenance::{MaintenanceError, MaintenanceStore, Reencrypt};
use stratum_postgres::keys::{ROTATION_LOCK, SECRETS_LOCK};
use stratum_postgres::{PgConfigStore, PgMaintenanceStore, Pool};
use stratum_tenancy::{ConfigStore, StoredConfigEntry, StoredValue, TenancyError};
use stratum_testkit::fixtures::tenant;
use stratum_testkit::sql::{conn, exec_on, texts_on};
use stratum_testkit::TestDb;
use time::OffsetDateTime;
use uuid::Uuid;

const OLD: &str = "old-master-key-0123456789abcdefghij";
const NEW: &str = "new-master-key-0123456789abcdefghij";
const OTHER: &str = "other-master-key-0123456789abcdefgh";

fn key(master: &str) -> EncryptionKey {
    EncryptionKey::derive(master).unwrap()
}

async fn setup() -> (TestDb, Pool, Uuid) {
    let db = TestDb::new().await;
    let pool = stratum_postgres::connect(&db.url, &Default::default()).unwrap();
    let tenant = tenant(&db.url, "acme").await;
    (db, pool, tenant)
}

fn entry(tenant: Uuid, name: &str, under: &str) -> StoredConfigEntry {
    let now = OffsetDateTime::now_utc();
    StoredConfigEntry {
        tenant_id: tenant,
        key: name.to_owned(),
        value: StoredValue::Encrypted(key(under).encrypt_str("\"s3cret\"").unwrap()),
        locked: false,
        created_at: now,
        updated_at: now,
        version: 1,
    }
}

fn to(new: &str) -> Reencrypt {
    let (old, new) = (key(OLD), key(new));
    Box::new(move |stored: &str| {
        let plain = old.decrypt(stored).map_err(|e| e.to_string())?;
        new.encrypt(&plain).map_err(|e| e.to_string())
    })
}

fn journal() -> stratum_core::Journal {
    Caller::system().journal("maintenance.rotate_encryption_key", "encryption_key")
}

async fn rotate(store: &PgMaintenanceStore, old: &str, new: &str) -> Result<(), MaintenanceError> {
    store
        .rotate(
            key(old).key_id().to_owned(),
            key(new).key_id().to_owned(),
            to(new),
            journal(),
        )
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_while_another_runs_is_refused_and_changes_nothing() {
    let (db, pool, tenant) = setup().await;
    let store = PgMaintenanceStore::new(pool.clone());
    let configs = PgConfigStore::new(pool.clone());
    store
        .init_active_key_id(key(OLD).key_id().to_owned())
        .await
        .unwrap();
    configs
        .put(entry(tenant, "a", OLD), None, vec![], journal())
        .await
        .unwrap();
    // Another rotation holds the rotation lock.
    let mut other = conn(&db.url).await;
    exec_on(&mut other, "BEGIN").await;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(ROTATION_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    let e = rotate(&store, OLD, NEW).await.unwrap_err();
    assert!(matches!(e, MaintenanceError::RotationInProgress), "{e:?}");
    exec_on(&mut other, "ROLLBACK").await;
    let mut c = conn(&db.url).await;
    assert_eq!(
        texts_on(
            &mut c,
            "SELECT active_key_id AS t FROM encryption_keys_state"
        )
        .await,
        vec![key(OLD).key_id().to_owned()]
    );
    let stored = texts_on(&mut c, "SELECT encrypted_value AS t FROM config_entries").await;
    assert!(stored[0].starts_with(&format!("v1:{}:", key(OLD).key_id())));
    // Once it is gone, the rotation runs.
    rotate(&store, OLD, NEW).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_checks_the_active_key_inside_its_transaction() {
    let (db, pool, tenant) = setup().await;
    let store = PgMaintenanceStore::new(pool.clone());
    let configs = PgConfigStore::new(pool.clone());
    configs
        .put(entry(tenant, "a", OLD), None, vec![], journal())
        .await
        .unwrap();
    // No active key recorded yet: the one key the data is under is the active one, not
    // whatever old key a caller names.
    let e = rotate(&store, OTHER, NEW).await.unwrap_err();
    assert!(matches!(e, MaintenanceError::InvalidOldKey), "{e:?}");
    rotate(&store, OLD, NEW).await.unwrap();
    // The first rotation committed: a second one from the same old key is refused.
    let e = rotate(&store, OLD, OTHER).await.unwrap_err();
    assert!(matches!(e, MaintenanceError::InvalidOldKey), "{e:?}");
    let mut c = conn(&db.url).await;
    assert_eq!(
        texts_on(
            &mut c,
            "SELECT active_key_id AS t FROM encryption_keys_state"
        )
        .await,
        vec![key(NEW).key_id().to_owned()]
    );
    let stored = texts_on(&mut c, "SELECT encrypted_value AS t FROM config_entries").await;
    assert_eq!(key(NEW).decrypt_str(&stored[0]).unwrap(), "\"s3cret\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_under_a_superseded_key_cannot_commit() {
    let (db, pool, tenant) = setup().await;
    let store = PgMaintenanceStore::new(pool.clone());
    let configs = PgConfigStore::new(pool.clone());
    store
        .init_active_key_id(key(OLD).key_id().to_owned())
        .await
        .unwrap();
    rotate(&store, OLD, NEW).await.unwrap();
    let e = configs
        .put(entry(tenant, "late", OLD), None, vec![], journal())
        .await
        .unwrap_err();
    match e {
        TenancyError::Store(StoreError::KeyNotActive { active_key_id }) => {
            assert_eq!(active_key_id, key(NEW).key_id());
        }
        other => panic!("{other:?}"),
    }
    let mut c = conn(&db.url).await;
    assert!(texts_on(&mut c, "SELECT key AS t FROM config_entries")
        .await
        .is_empty());
    configs
        .put(entry(tenant, "late", NEW), None, vec![], journal())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_of_secrets_waits_for_the_rotation_in_flight() {
    let (db, pool, tenant) = setup().await;
    let store = PgMaintenanceStore::new(pool.clone());
    store
        .init_active_key_id(key(OLD).key_id().to_owned())
        .await
        .unwrap();
    // A rotation in flight: it holds the secrets lock exclusively and has switched the
    // active key, not yet committed.
    let mut rotation = conn(&db.url).await;
    exec_on(&mut rotation, "BEGIN").await;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(SECRETS_LOCK)
        .execute(&mut rotation)
        .await
        .unwrap();
    exec_on(
        &mut rotation,
        &format!(
            "UPDATE encryption_keys_state SET active_key_id = '{}'",
            key(NEW).key_id()
        ),
    )
    .await;
    let configs = PgConfigStore::new(pool.clone());
    let writer = tokio::spawn(async move {
        configs
            .put(entry(tenant, "during", OLD), None, vec![], journal())
            .await
    });
    // The writer is queued behind the rotation (not merely slow to start).
    let mut watch = conn(&db.url).await;
    loop {
        let waiting = texts_on(
            &mut watch,
            "SELECT mode AS t FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
        if waiting.iter().any(|m| m == "ShareLock") {
            break;
        }
        assert!(
            !writer.is_finished(),
            "the writer did not wait for the rotation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exec_on(&mut rotation, "COMMIT").await;
    // It then sees the new active key: its value under the old key does not commit.
    match writer.await.unwrap() {
        Err(TenancyError::Store(StoreError::KeyNotActive { active_key_id })) => {
            assert_eq!(active_key_id, key(NEW).key_id());
        }
        other => panic!("{other:?}"),
    }
    assert!(texts_on(&mut watch, "SELECT key AS t FROM config_entries")
        .await
        .is_empty());
}
