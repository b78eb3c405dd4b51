//! Unit tests of the maintenance service against a mocked store: validation, access, the
//! cutoffs handed to the store, the journal entries (never any key material), and the
//! keyring swap that happens only after a successful rotation.

use std::sync::{Arc, Mutex};

use serde_json::json;
use stratum_core::testing;
use stratum_core::{Caller, Clock, Journal, RequestMeta, Scope, StoreError, TenantPath};
use stratum_crypto::{EncryptionKey, Keyring, SharedKeyring};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::*;

const NOW: OffsetDateTime = datetime!(2026-02-01 12:00:00 UTC);
const OLD: &str = "old-master-key-0123456789abcdefghij";
const NEW: &str = "new-master-key-0123456789abcdefghij";
const PREVIOUS: &str = "previous-master-key-0123456789abcdef";
const STRANGER: &str = "stranger-master-key-0123456789abcdef";

fn key(master: &str) -> EncryptionKey {
    EncryptionKey::derive(master).unwrap()
}

fn clock() -> Arc<dyn Clock> {
    testing::fixed_clock(NOW)
}

fn admin() -> Caller {
    testing::key_caller(
        Uuid::from_u128(7),
        Scope::Admin,
        None,
        testing::meta("req-1", "203.0.113.9", "tests"),
    )
}

fn scoped_admin() -> Caller {
    let t = TenantPath::root(Uuid::now_v7());
    testing::key_caller(
        Uuid::from_u128(8),
        Scope::Admin,
        Some(&t),
        RequestMeta::default(),
    )
}

fn global_writer() -> Caller {
    testing::key_caller(
        Uuid::from_u128(9),
        Scope::Write,
        None,
        RequestMeta::default(),
    )
}

fn ring(current: &str, previous: Option<&str>) -> SharedKeyring {
    SharedKeyring::new(Keyring::from_env_values(current, previous).unwrap())
}

fn service(store: MockMaintenanceStore, keyring: SharedKeyring) -> MaintenanceService {
    MaintenanceService::new(
        Arc::new(store),
        keyring,
        clock(),
        RetentionConfig::default(),
    )
}

fn assert_actor(j: &Journal) {
    assert_eq!(j.actor_id, Uuid::from_u128(7).to_string());
    assert_eq!(j.actor_type, "api_key");
    assert_eq!(j.meta.request_id.as_deref(), Some("req-1"));
    assert_eq!(j.tenant_id, None);
    assert_eq!(j.event, None, "maintenance is not a webhook event");
}

// ---------------------------------------------------------------------------------------
// purge_expired
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn purge_uses_the_configured_windows_by_default() {
    let mut store = MockMaintenanceStore::new();
    let counts = PurgeCounts {
        deliveries: 4,
        events: 3,
        audit_logs: 2,
        consent_records: 1,
    };
    store
        .expect_purge()
        .times(1)
        .withf(|cutoffs, j| {
            assert_eq!(
                *cutoffs,
                PurgeCutoffs {
                    deliveries_and_events_before: NOW - Duration::days(90),
                    audit_before: NOW - Duration::days(365),
                    consent_before: NOW - Duration::days(90),
                }
            );
            assert_actor(j);
            assert_eq!(j.action, "maintenance.purge_expired");
            assert_eq!(j.resource_type, "maintenance");
            assert_eq!(j.before, None);
            assert_eq!(
                j.after,
                Some(json!({"retention_days": 90, "audit_retention_days": 365}))
            );
            true
        })
        .returning(move |_, _| Ok(counts));
    let got = service(store, ring(OLD, None))
        .purge_expired(&admin(), None)
        .await
        .unwrap();
    assert_eq!(got, counts);
    assert_eq!(got.deleted_count(), 10);
}

#[tokio::test]
async fn purge_takes_the_requested_window_but_keeps_the_audit_window() {
    for days in [MIN_RETENTION_DAYS, 30, MAX_RETENTION_DAYS] {
        let mut store = MockMaintenanceStore::new();
        store
            .expect_purge()
            .times(1)
            .withf(move |c, j| {
                c.deliveries_and_events_before == NOW - Duration::days(days)
                    && c.consent_before == NOW - Duration::days(days)
                    && c.audit_before == NOW - Duration::days(365)
                    && j.after.as_ref().unwrap()["retention_days"] == json!(days)
            })
            .returning(|_, _| Ok(PurgeCounts::default()));
        let svc = MaintenanceService::new(
            Arc::new(store),
            ring(OLD, None),
            clock(),
            RetentionConfig {
                retention_days: 7,
                audit_retention_days: 365,
            },
        );
        svc.purge_expired(&admin(), Some(days)).await.unwrap();
    }
}

#[tokio::test]
async fn purge_rejects_windows_out_of_range_without_touching_the_store() {
    for days in [0, -1, MAX_RETENTION_DAYS + 1, 5000, i64::MAX, i64::MIN] {
        let mut store = MockMaintenanceStore::new();
        store.expect_purge().times(0);
        let e = service(store, ring(OLD, None))
            .purge_expired(&admin(), Some(days))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                MaintenanceError::Validation {
                    field: "retention_days",
                    ..
                }
            ),
            "{days}: {e:?}"
        );
    }
}

#[tokio::test]
async fn purge_needs_a_global_admin() {
    for caller in [scoped_admin(), global_writer()] {
        let mut store = MockMaintenanceStore::new();
        store.expect_purge().times(0);
        let e = service(store, ring(OLD, None))
            .purge_expired(&caller, None)
            .await
            .unwrap_err();
        assert!(matches!(e, MaintenanceError::Forbidden(_)), "{e:?}");
    }
}

#[tokio::test]
async fn purge_passes_storage_failures_through() {
    let mut store = MockMaintenanceStore::new();
    store
        .expect_purge()
        .returning(|_, _| Err(StoreError::Unavailable));
    let e = service(store, ring(OLD, None))
        .purge_expired(&admin(), None)
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        MaintenanceError::Store(StoreError::Unavailable)
    ));
}

// ---------------------------------------------------------------------------------------
// rotate_encryption_key
// ---------------------------------------------------------------------------------------

/// What the store's `rotate` was handed, checked inside the mock.
type Seen = Arc<Mutex<Vec<String>>>;

#[tokio::test]
async fn rotation_reencrypts_journals_key_ids_only_and_swaps_the_keyring() {
    let keyring = ring(OLD, Some(PREVIOUS));
    let under_old = key(OLD).encrypt_str("whsec_old").unwrap();
    let under_previous = key(PREVIOUS).encrypt_str("from-before").unwrap();
    let under_new = key(NEW).encrypt_str("already-new").unwrap();
    // One ciphertext character changed, away from the end (the last base64 character may
    // carry padding bits only): authentication must fail.
    let mut corrupt = key(OLD).encrypt_str("corrupt").unwrap().into_bytes();
    let at = corrupt.len() - 8;
    corrupt[at] = if corrupt[at] == b'A' { b'B' } else { b'A' };
    let corrupt = String::from_utf8(corrupt).unwrap();
    let under_stranger = key(STRANGER).encrypt_str("x").unwrap();

    let mut store = MockMaintenanceStore::new();
    let seen: Seen = Arc::default();
    let seen_in = seen.clone();
    let during = keyring.clone();
    store
        .expect_rotate()
        .times(1)
        .returning(move |old_id, new_id, reencrypt, j: Journal| {
            let mut out = seen_in.lock().unwrap();
            // While the rotation runs, writers here can already seal with the new key
            // (should they find it active before the switch), but still use the old one.
            assert!(during.get().holds(key(NEW).key_id()));
            assert_eq!(during.get().current().key_id(), key(OLD).key_id());
            // The store checks these inside its transaction (active key, then switch).
            assert_eq!(old_id, key(OLD).key_id());
            assert_eq!(new_id, key(NEW).key_id());
            assert_actor(&j);
            assert_eq!(j.action, "maintenance.rotate_encryption_key");
            assert_eq!(j.resource_type, "encryption_key");
            assert_eq!(j.resource_id.as_deref(), Some(key(NEW).key_id()));
            assert_eq!(
                j.after,
                Some(json!({"old_key_id": key(OLD).key_id(), "new_key_id": key(NEW).key_id()}))
            );
            let text = format!("{j:?}");
            assert!(!text.contains(OLD) && !text.contains(NEW), "{text}");

            let rotated = reencrypt(&under_old).unwrap();
            assert_eq!(key(NEW).decrypt_str(&rotated).unwrap(), "whsec_old");
            let rotated = reencrypt(&under_previous).unwrap();
            assert_eq!(key(NEW).decrypt_str(&rotated).unwrap(), "from-before");
            assert_eq!(reencrypt(&under_new).unwrap(), under_new, "left as is");
            for bad in [&corrupt, &under_stranger, &"not an envelope".to_owned()] {
                let why = reencrypt(bad).unwrap_err();
                assert!(!why.contains(OLD) && !why.contains(NEW), "{why}");
                out.push(why);
            }
            Ok(RotationCounts {
                config_entries: 2,
                webhooks: 3,
            })
        });
    let counts = service(store, keyring.clone())
        .rotate_encryption_key(&admin(), OLD, NEW)
        .await
        .unwrap();
    assert_eq!(
        counts,
        RotationCounts {
            config_entries: 2,
            webhooks: 3
        }
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "the mock ran the closure");
    let now = keyring.get();
    assert_eq!(now.current().key_id(), key(NEW).key_id());
    assert_eq!(now.previous().map(|k| k.key_id()), Some(key(OLD).key_id()));
    assert_eq!(
        now.decrypt_str(&key(OLD).encrypt_str("v").unwrap())
            .unwrap(),
        "v",
        "values written under the old key meanwhile stay readable"
    );
}

#[tokio::test]
async fn an_old_key_this_process_does_not_hold_never_reaches_the_store() {
    for wrong in [STRANGER, "short", ""] {
        let keyring = ring(OLD, Some(PREVIOUS));
        let store = MockMaintenanceStore::new(); // any call panics
        let e = service(store, keyring.clone())
            .rotate_encryption_key(&admin(), wrong, NEW)
            .await
            .unwrap_err();
        assert!(
            matches!(e, MaintenanceError::InvalidOldKey),
            "{wrong}: {e:?}"
        );
        assert_eq!(keyring.get().current().key_id(), key(OLD).key_id());
    }
}

#[tokio::test]
async fn the_store_decides_whether_old_key_is_the_active_key() {
    // A held key goes to the store, which compares it with the database's active key
    // inside the rotation's transaction (another process may have rotated since this one
    // last wrote, so this process's current key says nothing).
    for wrong in [PREVIOUS, OLD] {
        let keyring = ring(OLD, Some(PREVIOUS));
        let mut store = MockMaintenanceStore::new();
        store
            .expect_rotate()
            .times(1)
            .withf(move |old_id, new_id, _, _| {
                old_id == key(wrong).key_id() && new_id == key(NEW).key_id()
            })
            .returning(|_, _, _, _| Err(MaintenanceError::InvalidOldKey));
        let e = service(store, keyring.clone())
            .rotate_encryption_key(&admin(), wrong, NEW)
            .await
            .unwrap_err();
        assert!(
            matches!(e, MaintenanceError::InvalidOldKey),
            "{wrong}: {e:?}"
        );
        assert_eq!(keyring.get().current().key_id(), key(OLD).key_id());
    }
}

#[tokio::test]
async fn new_key_is_validated_before_anything_else() {
    let short = "n".repeat(MIN_NEW_KEY_CHARS - 1);
    // 31 three-byte characters: long enough in bytes, too short in characters.
    let wide = "€".repeat(MIN_NEW_KEY_CHARS - 1);
    for (old, new) in [
        (OLD, short.as_str()),
        (OLD, wide.as_str()),
        (OLD, ""),
        (OLD, OLD),
        (STRANGER, STRANGER),
    ] {
        let keyring = ring(OLD, None);
        let e = service(MockMaintenanceStore::new(), keyring.clone())
            .rotate_encryption_key(&admin(), old, new)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                MaintenanceError::Validation {
                    field: "new_key",
                    ..
                }
            ),
            "{new}: {e:?}"
        );
        assert_eq!(keyring.get().current().key_id(), key(OLD).key_id());
    }
}

#[tokio::test]
async fn rotation_needs_a_global_admin() {
    for caller in [scoped_admin(), global_writer()] {
        let e = service(MockMaintenanceStore::new(), ring(OLD, None))
            .rotate_encryption_key(&caller, OLD, NEW)
            .await
            .unwrap_err();
        assert!(matches!(e, MaintenanceError::Forbidden(_)), "{e:?}");
    }
}

#[tokio::test]
async fn a_failed_rotation_keeps_the_keyring() {
    let failures: Vec<fn() -> MaintenanceError> = vec![
        || MaintenanceError::Reencrypt {
            row: "webhook 1".into(),
            reason: "decryption failed".into(),
        },
        || MaintenanceError::Store(StoreError::Unavailable),
        || MaintenanceError::RotationInProgress,
        || MaintenanceError::InvalidOldKey,
    ];
    for fail in failures {
        let keyring = ring(OLD, None);
        let mut store = MockMaintenanceStore::new();
        store
            .expect_rotate()
            .times(1)
            .returning(move |_, _, _, _| Err(fail()));
        let e = service(store, keyring.clone())
            .rotate_encryption_key(&admin(), OLD, NEW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                MaintenanceError::Reencrypt { .. }
                    | MaintenanceError::Store(_)
                    | MaintenanceError::RotationInProgress
                    | MaintenanceError::InvalidOldKey
            ),
            "{e:?}"
        );
        let now = keyring.get();
        assert_eq!(now.current().key_id(), key(OLD).key_id());
        assert!(now.previous().is_none());
    }
}

// ---------------------------------------------------------------------------------------
// check_keys
// ---------------------------------------------------------------------------------------

fn store_with_ids(ids: &[&str]) -> MockMaintenanceStore {
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    let mut store = MockMaintenanceStore::new();
    store
        .expect_stored_key_ids()
        .returning(move || Ok(ids.clone()));
    store
}

#[tokio::test]
async fn start_up_accepts_data_under_the_current_or_previous_key() {
    let keyring = Keyring::from_env_values(NEW, Some(OLD)).unwrap();
    for ids in [
        vec![],
        vec![key(NEW).key_id()],
        vec![key(OLD).key_id()],
        vec![key(OLD).key_id(), key(NEW).key_id()],
    ] {
        let svc = service(store_with_ids(&ids), ring(NEW, None));
        assert_eq!(svc.check_keys(&keyring).await, Ok(()), "{ids:?}");
    }
}

#[tokio::test]
async fn start_up_accepts_data_under_the_next_key() {
    // Step 1 of the rolling rotation: the new key is readable before the rotation.
    let keyring = Keyring::from_env(OLD, [NEW]).unwrap();
    let svc = service(
        store_with_ids(&[key(OLD).key_id(), key(NEW).key_id()]),
        ring(OLD, None),
    );
    assert_eq!(svc.check_keys(&keyring).await, Ok(()));
}

/// Stored key ids, the recorded active key, the keyring → the candidate handed to the
/// store, the key id the process encrypts with afterwards.
type StartUpCase<'a> = (Vec<&'a str>, Option<&'a str>, SharedKeyring, String, String);

#[tokio::test]
async fn start_up_records_and_adopts_the_active_key() {
    let (old, new, stranger) = (key(OLD), key(NEW), key(STRANGER));
    let cases: Vec<StartUpCase> = vec![
        // First start, one key in the data: that key, even if this process encrypts with another.
        (
            vec![new.key_id()],
            None,
            SharedKeyring::new(Keyring::from_env(OLD, [NEW]).unwrap()),
            key(NEW).key_id().to_owned(),
            key(NEW).key_id().to_owned(),
        ),
        // First start, no data: this process's key.
        (
            vec![],
            None,
            ring(OLD, None),
            key(OLD).key_id().to_owned(),
            key(OLD).key_id().to_owned(),
        ),
        // Recorded and held (the rotation ran elsewhere): encrypt with it.
        (
            vec![old.key_id()],
            Some(new.key_id()),
            SharedKeyring::new(Keyring::from_env(OLD, [NEW]).unwrap()),
            key(OLD).key_id().to_owned(),
            key(NEW).key_id().to_owned(),
        ),
        // Recorded but not held: keep the own key (writes of secrets will answer 503).
        (
            vec![],
            Some(stranger.key_id()),
            ring(OLD, None),
            key(OLD).key_id().to_owned(),
            key(OLD).key_id().to_owned(),
        ),
    ];
    for (ids, recorded, keyring, candidate, current_after) in cases {
        let mut store = store_with_ids(&ids);
        let recorded = recorded.map(str::to_owned);
        let want = candidate.clone();
        store
            .expect_init_active_key_id()
            .times(1)
            .withf(move |c| *c == want)
            .returning(move |c| Ok(recorded.clone().unwrap_or(c)));
        let active = service(store, keyring.clone())
            .init_active_key()
            .await
            .unwrap();
        assert!(!active.is_empty());
        assert_eq!(keyring.get().current().key_id(), current_after, "{ids:?}");
    }
}

#[tokio::test]
async fn start_up_refuses_data_under_another_key_and_says_what_to_do() {
    let cases = [
        (
            Keyring::from_env_values(OLD, None).unwrap(),
            "nor STRATUM_ENCRYPTION_KEY_NEXT is set".to_owned(),
        ),
        (
            Keyring::from_env_values(OLD, Some(PREVIOUS)).unwrap(),
            key(PREVIOUS).key_id().to_owned(),
        ),
    ];
    for (keyring, previous_says) in cases {
        let svc = service(
            store_with_ids(&[key(OLD).key_id(), key(NEW).key_id()]),
            ring(OLD, None),
        );
        let msg = svc.check_keys(&keyring).await.unwrap_err();
        assert!(msg.contains(key(NEW).key_id()), "{msg}");
        assert!(msg.contains(key(OLD).key_id()), "{msg}");
        assert!(
            msg.contains("Set STRATUM_ENCRYPTION_KEY to the key in use"),
            "{msg}"
        );
        assert!(msg.contains("STRATUM_ENCRYPTION_KEY_PREVIOUS"), "{msg}");
        assert!(msg.contains(&previous_says), "{msg}");
        assert!(!msg.contains(OLD) && !msg.contains(NEW), "{msg}");
    }
}

#[tokio::test]
async fn start_up_reports_an_unreadable_store() {
    let mut store = MockMaintenanceStore::new();
    store
        .expect_stored_key_ids()
        .returning(|| Err(StoreError::Unavailable));
    let msg = service(store, ring(OLD, None))
        .check_keys(&Keyring::from_env_values(OLD, None).unwrap())
        .await
        .unwrap_err();
    assert!(msg.contains("storage unavailable"), "{msg}");
}
