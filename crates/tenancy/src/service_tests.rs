//! Unit tests of the tenancy services against mocked ports: validation, visibility and,
//! above all, the [`Journal`] each mutation hands to its port (the audit entry and event
//! that commit with the change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use stratum_core::testing::{self, fixed_clock, put_in, slot, taken, Slot};
use stratum_core::{
    Actor, ActorKind, Caller, Clock, Journal, Limit, Precondition, RequestMeta, Scope, StoreError,
    TenantPath, TenantScope, REDACTED,
};
use stratum_crypto::{sha256_hex, Keyring, SharedKeyring};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::*;

const NOW: OffsetDateTime = datetime!(2026-02-01 12:00:00 UTC);
const EARLIER: OffsetDateTime = datetime!(2026-01-01 08:00:00 UTC);

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn clock() -> Arc<dyn Clock> {
    fixed_clock(NOW)
}

fn meta() -> RequestMeta {
    testing::meta("req-7f3a", "203.0.113.9", "tenancy-tests/1.0")
}

/// A global API key with `scope`; also returns the key id the journal must name.
fn global_caller(scope: Scope) -> (Caller, Uuid) {
    testing::global_caller(scope, meta())
}

fn admin() -> Caller {
    global_caller(Scope::Admin).0
}

/// A key bound to `t`'s subtree.
fn scoped_caller(t: &Tenant, scope: Scope) -> Caller {
    testing::scoped_caller(&t.ancestry_path, scope, meta())
}

fn tenant_at(path: TenantPath, parent_id: Option<Uuid>) -> Tenant {
    let id = path.leaf().unwrap();
    Tenant {
        id,
        parent_id,
        name: format!("Tenant {id}"),
        slug: format!("t_{}", id.simple()),
        depth: path.depth() as i32,
        ancestry_path: path,
        metadata: json!({}),
        status: TenantStatus::Active,
        deleted_at: None,
        created_at: EARLIER,
        updated_at: EARLIER,
        version: 1,
    }
}

fn root() -> Tenant {
    tenant_at(TenantPath::root(Uuid::now_v7()), None)
}

fn child(parent: &Tenant) -> Tenant {
    tenant_at(parent.ancestry_path.child(Uuid::now_v7()), Some(parent.id))
}

/// A tenant store whose `get` knows exactly these tenants.
fn tenant_store(known: &[&Tenant]) -> MockTenantStore {
    let map: HashMap<Uuid, Tenant> = known.iter().map(|t| (t.id, (*t).clone())).collect();
    let all: Vec<Tenant> = map.values().cloned().collect();
    let mut store = MockTenantStore::new();
    store
        .expect_get()
        .returning(move |id| Ok(map.get(&id).cloned()));
    store.expect_descendants().returning(move |path| {
        Ok(all
            .iter()
            .filter(|t| path.contains(&t.ancestry_path) && t.ancestry_path != path)
            .cloned()
            .collect())
    });
    store
}

fn tenant_service(store: MockTenantStore) -> TenantService {
    TenantService::new(Arc::new(store), clock())
}

/// Expects `times` calls of `modify` on `current.id` and emulates the adapter: an archived
/// tenant is `TenantNotFound` without calling the change; otherwise the change sees
/// `current` (the locked row), and `Some((next, journal))` is recorded in `sink` and
/// answered as `next` with the version bumped, `None` answers `current`, and an error is
/// returned with nothing written.
fn modify_applies_to(
    store: &mut MockTenantStore,
    current: Tenant,
    sink: Option<Slot<(Tenant, Journal)>>,
    times: usize,
) {
    store
        .expect_modify()
        .times(times)
        .returning(move |id, change: TenantChange| {
            assert_eq!(id, current.id, "modifies the tenant asked for");
            if current.status != TenantStatus::Active {
                return Err(TenancyError::TenantNotFound);
            }
            match change(&current)? {
                None => Ok(current.clone()),
                Some((next, journal)) => {
                    let written = Tenant {
                        version: current.version + 1,
                        ..next.clone()
                    };
                    if let Some(sink) = &sink {
                        put_in(sink, (next, journal));
                    }
                    Ok(written)
                }
            }
        });
}

/// True when nothing was written through [`modify_applies_to`]'s sink.
fn nothing_written(sink: &Slot<(Tenant, Journal)>) -> bool {
    sink.lock().unwrap().is_none()
}

fn keyring() -> SharedKeyring {
    SharedKeyring::new(Keyring::from_env_values(&"x".repeat(32), None).unwrap())
}

/// Everything in a journal that could leak a value, as one string.
fn journal_text(j: &Journal) -> String {
    let mut s = format!("{j:?}");
    for v in [&j.before, &j.after].into_iter().flatten() {
        s.push_str(&v.to_string());
    }
    if let Some(e) = &j.event {
        s.push_str(&e.payload.to_string());
    }
    s
}

fn assert_validation(err: TenancyError, expected_field: &str) {
    match err {
        TenancyError::Validation { field, .. } => assert_eq!(field, expected_field),
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// TenantService::create
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_root_by_global_actor_journals_tenant_created() {
    let (caller, key_id) = global_caller(Scope::Write);
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = tenant_store(&[]);
    let sink = Arc::clone(&seen);
    store.expect_create().times(1).returning(move |t, j| {
        put_in(&sink, (t, j));
        Ok(())
    });
    let svc = tenant_service(store);

    let created = svc
        .create(
            &caller,
            NewTenant {
                name: "  Acme Corp ".into(),
                slug: "acme".into(),
                parent_id: None,
                metadata: Some(json!({"tier": "gold"})),
            },
        )
        .await
        .unwrap();

    let (stored, journal) = taken(&seen);
    assert_eq!(stored, created);
    let id = stored.id;
    assert_eq!(stored.parent_id, None);
    assert_eq!(stored.depth, 0);
    assert_eq!(stored.ancestry_path.as_str(), format!("/{id}/"));
    assert_eq!(stored.name, "Acme Corp");
    assert_eq!(stored.slug, "acme");
    assert_eq!(stored.metadata, json!({"tier": "gold"}));
    assert_eq!(stored.status, TenantStatus::Active);
    assert_eq!((stored.created_at, stored.updated_at), (NOW, NOW));

    assert_eq!(journal.actor_id, key_id.to_string());
    assert_eq!(journal.actor_type, "api_key");
    assert_eq!(journal.action, "tenant.created");
    assert_eq!(journal.resource_type, "tenant");
    assert_eq!(journal.resource_id, Some(id.to_string()));
    assert_eq!(journal.tenant_id, Some(id));
    assert_eq!(journal.before, None);
    let after = journal.after.clone().expect("after-state");
    assert_eq!(after, serde_json::to_value(&stored).unwrap());
    assert_eq!(after["id"], json!(id.to_string()));
    assert_eq!(after["ancestry_path"], json!(format!("/{id}/")));
    assert_eq!(after["depth"], json!(0));
    assert_eq!(after["status"], json!("active"));
    assert_eq!(journal.meta, meta());
    assert_eq!(journal.meta.request_id.as_deref(), Some("req-7f3a"));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "tenant.created");
    assert_eq!(event.tenant_id, Some(id));
    assert_eq!(event.payload, after);
    assert!(event.extra_audience.is_empty());
}

#[tokio::test]
async fn create_child_by_scoped_actor_extends_the_visible_parents_path() {
    let r = root();
    let parent = child(&r);
    let caller = scoped_caller(&r, Scope::Write);
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = tenant_store(&[&r, &parent]);
    let sink = Arc::clone(&seen);
    store.expect_create().times(1).returning(move |t, j| {
        put_in(&sink, (t, j));
        Ok(())
    });

    let created = tenant_service(store)
        .create(
            &caller,
            NewTenant {
                name: "Team".into(),
                slug: "team".into(),
                parent_id: Some(parent.id),
                metadata: None,
            },
        )
        .await
        .unwrap();

    let (stored, journal) = taken(&seen);
    assert_eq!(stored, created);
    assert_eq!(stored.parent_id, Some(parent.id));
    assert_eq!(stored.ancestry_path, parent.ancestry_path.child(stored.id));
    assert_eq!(
        stored.ancestry_path.as_str(),
        format!("{}{}/", parent.ancestry_path, stored.id)
    );
    assert_eq!(stored.depth, parent.depth + 1);
    assert_eq!(stored.depth, 2);
    assert_eq!(stored.metadata, json!({}));
    assert_eq!(journal.tenant_id, Some(stored.id));
    assert_eq!(journal.actor_id, caller.actor.id());
    let event = journal.event.expect("an event");
    assert_eq!(event.tenant_id, Some(stored.id));
    assert_eq!(event.payload["parent_id"], json!(parent.id.to_string()));
    assert_eq!(event.payload["depth"], json!(2));
}

#[tokio::test]
async fn scoped_actor_cannot_create_a_root() {
    let r = root();
    let mut store = tenant_store(&[&r]);
    store.expect_create().times(0);

    let err = tenant_service(store)
        .create(
            &scoped_caller(&r, Scope::Admin),
            NewTenant {
                name: "Rogue".into(),
                slug: "rogue".into(),
                parent_id: None,
                metadata: None,
            },
        )
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn scoped_actor_cannot_create_under_a_parent_outside_its_subtree() {
    let mine = root();
    let foreign = root();
    let foreign_child = child(&foreign);
    let mut store = tenant_store(&[&mine, &foreign, &foreign_child]);
    store.expect_create().times(0);
    let svc = tenant_service(store);
    let caller = scoped_caller(&mine, Scope::Admin);

    for parent in [foreign.id, foreign_child.id, Uuid::now_v7()] {
        let err = svc
            .create(
                &caller,
                NewTenant {
                    name: "Intruder".into(),
                    slug: "intruder".into(),
                    parent_id: Some(parent),
                    metadata: None,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TenancyError::TenantNotFound), "{err:?}");
    }
}

#[tokio::test]
async fn create_under_an_archived_parent_is_not_found() {
    let mut parent = root();
    parent.status = TenantStatus::Archived;
    parent.deleted_at = Some(EARLIER);
    let mut store = tenant_store(&[&parent]);
    store.expect_create().times(0);

    let err = tenant_service(store)
        .create(
            &admin(),
            NewTenant {
                name: "Late".into(),
                slug: "late".into(),
                parent_id: Some(parent.id),
                metadata: None,
            },
        )
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::TenantNotFound), "{err:?}");
}

#[tokio::test]
async fn create_rejects_invalid_input_before_touching_the_store() {
    let long_slug = "a".repeat(64);
    let long_name = "n".repeat(256);
    let cases: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("Acme", "Acme", None, "slug"),
        ("Acme", "1acme", None, "slug"),
        ("Acme", "ac-me", None, "slug"),
        ("Acme", "", None, "slug"),
        ("Acme", &long_slug, None, "slug"),
        ("", "acme", None, "name"),
        ("   ", "acme", None, "name"),
        (&long_name, "acme", None, "name"),
        ("Acme", "acme", Some(json!([1, 2])), "metadata"),
        ("Acme", "acme", Some(json!("text")), "metadata"),
        ("Acme", "acme", Some(json!(3)), "metadata"),
        ("Acme", "acme", Some(json!(true)), "metadata"),
    ];
    for (name, slug, metadata, field) in cases {
        let mut store = MockTenantStore::new();
        store.expect_create().times(0);
        store.expect_get().times(0);
        let err = tenant_service(store)
            .create(
                &admin(),
                NewTenant {
                    name: name.into(),
                    slug: slug.into(),
                    parent_id: None,
                    metadata,
                },
            )
            .await
            .unwrap_err();
        assert_validation(err, field);
    }
}

// ---------------------------------------------------------------------------------------
// TenantService::update
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_with_no_effective_change_never_writes() {
    let mut t = root();
    t.name = "Acme".into();
    t.slug = "acme".into();
    t.metadata = json!({"a": 1});
    let patches = [
        TenantPatch::default(),
        TenantPatch {
            name: Some(" Acme ".into()),
            slug: Some("acme".into()),
            metadata: Some(json!({"a": 1})),
        },
    ];
    for patch in patches {
        let seen: Slot<(Tenant, Journal)> = slot();
        let mut store = MockTenantStore::new();
        modify_applies_to(&mut store, t.clone(), Some(Arc::clone(&seen)), 1);
        let got = tenant_service(store)
            .update(&admin(), t.id, patch, Precondition::Any)
            .await
            .unwrap();
        assert_eq!(got, t);
        assert!(nothing_written(&seen), "no change, no write");
    }
}

#[tokio::test]
async fn update_slug_journals_before_and_after() {
    let mut t = child(&root());
    t.slug = "acme".into();
    let (caller, key_id) = global_caller(Scope::Write);
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = MockTenantStore::new();
    modify_applies_to(&mut store, t.clone(), Some(Arc::clone(&seen)), 1);

    let updated = tenant_service(store)
        .update(
            &caller,
            t.id,
            TenantPatch {
                slug: Some("acme_2".into()),
                ..TenantPatch::default()
            },
            Precondition::Any,
        )
        .await
        .unwrap();

    let (stored, journal) = taken(&seen);
    assert_eq!(
        updated.version,
        t.version + 1,
        "the answer carries the new version"
    );
    assert_eq!(
        Tenant {
            version: updated.version,
            ..stored.clone()
        },
        updated
    );
    assert_eq!(stored.slug, "acme_2");
    assert_eq!(stored.updated_at, NOW);
    assert_eq!(stored.ancestry_path, t.ancestry_path);
    assert_eq!(journal.action, "tenant.updated");
    assert_eq!(journal.resource_id, Some(t.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    assert_eq!(journal.actor_id, key_id.to_string());
    let before = journal.before.clone().expect("before-state");
    let after = journal.after.clone().expect("after-state");
    assert_ne!(before, after);
    assert_eq!(before, serde_json::to_value(&t).unwrap());
    assert_eq!(after, serde_json::to_value(&stored).unwrap());
    assert_eq!(before["slug"], json!("acme"));
    assert_eq!(after["slug"], json!("acme_2"));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "tenant.updated");
    assert_eq!(event.tenant_id, Some(t.id));
    assert_eq!(event.payload, after);
}

#[tokio::test]
async fn update_of_an_archived_tenant_is_not_found() {
    let mut t = root();
    t.status = TenantStatus::Archived;
    t.deleted_at = Some(EARLIER);
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = MockTenantStore::new();
    modify_applies_to(&mut store, t.clone(), Some(Arc::clone(&seen)), 1);

    let err = tenant_service(store)
        .update(
            &admin(),
            t.id,
            TenantPatch {
                name: Some("Revived".into()),
                ..TenantPatch::default()
            },
            Precondition::Any,
        )
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::TenantNotFound), "{err:?}");
    assert!(nothing_written(&seen));
}

#[tokio::test]
async fn update_by_a_caller_who_cannot_see_the_tenant_is_not_found() {
    let r = root();
    let (a, b) = (child(&r), child(&r));
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = MockTenantStore::new();
    modify_applies_to(&mut store, b.clone(), Some(Arc::clone(&seen)), 1);

    let err = tenant_service(store)
        .update(
            &scoped_caller(&a, Scope::Write),
            b.id,
            TenantPatch {
                name: Some("Taken over".into()),
                ..TenantPatch::default()
            },
            Precondition::Any,
        )
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::TenantNotFound), "{err:?}");
    assert!(nothing_written(&seen));
}

#[tokio::test]
async fn update_rejects_an_invalid_patch() {
    let t = root();
    for (patch, field) in [
        (
            TenantPatch {
                slug: Some("Bad Slug".into()),
                ..TenantPatch::default()
            },
            "slug",
        ),
        (
            TenantPatch {
                name: Some(" ".into()),
                ..TenantPatch::default()
            },
            "name",
        ),
        (
            TenantPatch {
                metadata: Some(json!(["x"])),
                ..TenantPatch::default()
            },
            "metadata",
        ),
    ] {
        let mut store = tenant_store(&[&t]);
        store.expect_modify().times(0);
        let err = tenant_service(store)
            .update(&admin(), t.id, patch, Precondition::Any)
            .await
            .unwrap_err();
        assert_validation(err, field);
    }
}

// ---------------------------------------------------------------------------------------
// TenantService::archive
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn archive_journals_tenant_deleted_with_archived_after_state() {
    let t = child(&root());
    let seen: Slot<(Uuid, i64, OffsetDateTime, Journal)> = slot();
    let mut store = tenant_store(&[&t]);
    let sink = Arc::clone(&seen);
    store
        .expect_archive()
        .times(1)
        .returning(move |id, e, at, j| {
            put_in(&sink, (id, e, at, j));
            Ok(())
        });

    tenant_service(store)
        .archive(&admin(), t.id, Precondition::Any)
        .await
        .unwrap();

    let (id, expected, at, journal) = taken(&seen);
    assert_eq!((id, expected, at), (t.id, t.version, NOW));
    assert_eq!(journal.action, "tenant.deleted");
    assert_eq!(journal.resource_type, "tenant");
    assert_eq!(journal.resource_id, Some(t.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    let before = journal.before.clone().expect("before-state");
    let after = journal.after.clone().expect("after-state");
    assert_eq!(before["status"], json!("active"));
    assert_eq!(before["deleted_at"], Value::Null);
    assert_eq!(after["status"], json!("archived"));
    assert!(after["deleted_at"].is_string(), "{after}");
    assert_eq!(after["id"], json!(t.id.to_string()));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "tenant.deleted");
    assert_eq!(event.tenant_id, Some(t.id));
    assert_eq!(event.payload, after);
}

#[tokio::test]
async fn archive_propagates_has_children() {
    let t = root();
    let mut store = tenant_store(&[&t]);
    store
        .expect_archive()
        .times(1)
        .returning(|_, _, _, _| Err(TenancyError::HasChildren));

    let err = tenant_service(store)
        .archive(&admin(), t.id, Precondition::Any)
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::HasChildren), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// TenantService::move_to
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn move_under_itself_or_a_descendant_is_a_cycle() {
    let r = root();
    let t = child(&r);
    let c = child(&t);
    let gc = child(&c);
    for target in [t.id, c.id, gc.id] {
        let mut store = tenant_store(&[&r, &t, &c, &gc]);
        store.expect_move_subtree().times(0);
        let err = tenant_service(store)
            .move_to(&admin(), t.id, target, Precondition::Any)
            .await
            .unwrap_err();
        assert!(matches!(err, TenancyError::CycleDetected), "{err:?}");
    }
}

#[tokio::test]
async fn move_rewrites_the_path_and_tells_the_old_ancestors() {
    let old_root = root();
    let old_parent = child(&old_root);
    let t = child(&old_parent);
    let new_parent = root();
    type Moved = (
        Uuid,
        i64,
        Uuid,
        TenantPath,
        TenantPath,
        OffsetDateTime,
        Journal,
    );
    let seen: Slot<Moved> = slot();
    let mut store = tenant_store(&[&old_root, &old_parent, &t, &new_parent]);
    let sink = Arc::clone(&seen);
    store
        .expect_move_subtree()
        .times(1)
        .returning(move |id, e, np, from, to, at, j| {
            put_in(&sink, (id, e, np, from, to, at, j));
            Ok(e + 1)
        });

    let moved = tenant_service(store)
        .move_to(&admin(), t.id, new_parent.id, Precondition::Any)
        .await
        .unwrap();

    let (id, expected, np, from, to, at, journal) = taken(&seen);
    let expected_to = TenantPath::root(new_parent.id).child(t.id);
    assert_eq!(
        (id, expected, np, at),
        (t.id, t.version, new_parent.id, NOW)
    );
    assert_eq!(moved.version, t.version + 1);
    assert_eq!(from, t.ancestry_path);
    assert_eq!(to, expected_to);
    assert_eq!(
        to.as_str(),
        format!("{}{}/", new_parent.ancestry_path, t.id)
    );
    assert_eq!(moved.ancestry_path, expected_to);
    assert_eq!(moved.parent_id, Some(new_parent.id));
    assert_eq!(moved.depth, 1);

    assert_eq!(journal.action, "tenant.moved");
    assert_eq!(journal.tenant_id, Some(t.id));
    assert_eq!(journal.resource_id, Some(t.id.to_string()));
    let before = journal.before.clone().expect("before-state");
    let after = journal.after.clone().expect("after-state");
    assert_eq!(before["ancestry_path"], json!(t.ancestry_path.as_str()));
    assert_eq!(after["ancestry_path"], json!(expected_to.as_str()));
    assert_eq!(after["depth"], json!(1));
    assert_eq!(after["parent_id"], json!(new_parent.id.to_string()));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "tenant.moved");
    assert_eq!(event.tenant_id, Some(t.id));
    // `data` is the tenant after the move, with `previous_parent_id` inside it.
    let mut expected_payload = after.clone();
    expected_payload["previous_parent_id"] = json!(old_parent.id.to_string());
    assert_eq!(event.payload, expected_payload);
    assert!(event.payload.get("tenant").is_none());
    assert_eq!(event.extra_audience, t.ancestry_path.ids());
    assert!(event.extra_audience.contains(&old_root.id));
    assert!(event.extra_audience.contains(&old_parent.id));
    assert!(!event.extra_audience.contains(&new_parent.id));
}

/// A chain of `n + 1` tenants: a root and `n` levels below it.
fn chain(n: usize) -> Vec<Tenant> {
    let mut out = vec![root()];
    for _ in 0..n {
        let next = child(out.last().unwrap());
        out.push(next);
    }
    out
}

#[tokio::test]
async fn create_refuses_a_tenant_deeper_than_32_levels() {
    let tree = chain(crate::model::MAX_DEPTH);
    let refs: Vec<&Tenant> = tree.iter().collect();
    let mut store = tenant_store(&refs);
    store.expect_create().times(1).returning(|_, _| Ok(()));
    let svc = tenant_service(store);
    let new = |parent: &Tenant| NewTenant {
        name: "Deep".into(),
        slug: "deep".into(),
        parent_id: Some(parent.id),
        metadata: None,
    };
    // Under depth 31: the new one is at depth 32, allowed.
    let ok = svc.create(&admin(), new(&tree[31])).await.unwrap();
    assert_eq!(ok.depth, 32);
    // Under depth 32: refused, nothing stored (the mock allows one create).
    let err = svc.create(&admin(), new(&tree[32])).await.unwrap_err();
    assert!(
        matches!(
            err,
            TenancyError::Validation {
                field: "parent_id",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn move_refuses_when_the_moved_subtree_would_exceed_32_levels() {
    let deep = chain(30);
    // A subtree of three levels (t, c, gc): under depth 30 its leaf would be at 33.
    let other = root();
    let t = child(&other);
    let c = child(&t);
    let gc = child(&c);
    let mut refs: Vec<&Tenant> = deep.iter().collect();
    refs.extend([&other, &t, &c, &gc]);
    let mut store = tenant_store(&refs);
    store
        .expect_move_subtree()
        .times(1)
        .returning(|_, expected, _, _, _, _, _| Ok(expected + 1));
    let svc = tenant_service(store);
    let err = svc
        .move_to(&admin(), t.id, deep[30].id, Precondition::Any)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TenancyError::Validation {
                field: "new_parent_id",
                ..
            }
        ),
        "{err:?}"
    );
    // Under depth 29 the leaf lands at 32: allowed.
    svc.move_to(&admin(), t.id, deep[29].id, Precondition::Any)
        .await
        .unwrap();
}

#[tokio::test]
async fn nul_in_any_stored_string_is_a_validation_error() {
    let r = root();
    let mut store = tenant_store(&[&r]);
    store.expect_create().times(0);
    store.expect_modify().times(0);
    let svc = tenant_service(store);
    let base = NewTenant {
        name: "Acme".into(),
        slug: "acme".into(),
        parent_id: None,
        metadata: None,
    };
    for (bad, field) in [
        (
            NewTenant {
                name: "A\u{0}".into(),
                ..base.clone()
            },
            "name",
        ),
        (
            NewTenant {
                metadata: Some(json!({"k": "\u{0}"})),
                ..base.clone()
            },
            "metadata",
        ),
        (
            NewTenant {
                metadata: Some(json!({"\u{0}": 1})),
                ..base.clone()
            },
            "metadata",
        ),
    ] {
        let err = svc.create(&admin(), bad).await.unwrap_err();
        assert!(
            matches!(err, TenancyError::Validation { field: f, .. } if f == field),
            "{err:?}"
        );
    }
    for (patch, field) in [
        (
            TenantPatch {
                name: Some("\u{0}".into()),
                ..Default::default()
            },
            "name",
        ),
        (
            TenantPatch {
                metadata: Some(json!({"a": ["\u{0}"]})),
                ..Default::default()
            },
            "metadata",
        ),
    ] {
        let err = svc
            .update(&admin(), r.id, patch, Precondition::Any)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TenancyError::Validation { field: f, .. } if f == field),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn move_under_the_current_parent_changes_nothing() {
    let r = root();
    let t = child(&r);
    let mut store = tenant_store(&[&r, &t]);
    store.expect_move_subtree().times(0);

    let got = tenant_service(store)
        .move_to(&admin(), t.id, r.id, Precondition::Any)
        .await
        .unwrap();

    assert_eq!(got, t);
}

// ---------------------------------------------------------------------------------------
// TenantService::ancestors and list
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ancestors_are_root_first_and_limited_to_the_callers_subtree() {
    let r = root();
    let a = child(&r);
    let b = child(&a);
    let c = child(&b);
    let make = || {
        let mut store = tenant_store(&[&r, &a, &b, &c]);
        let expected_ids = vec![r.id, a.id, b.id];
        let scrambled = vec![b.clone(), r.clone(), a.clone()];
        store
            .expect_get_many()
            .withf(move |ids| *ids == expected_ids)
            .times(1)
            .returning(move |_| Ok(scrambled.clone()));
        tenant_service(store)
    };

    let scoped = make()
        .ancestors(&scoped_caller(&a, Scope::Read), c.id)
        .await
        .unwrap();
    assert_eq!(
        scoped.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![a.id, b.id]
    );

    let global = make().ancestors(&admin(), c.id).await.unwrap();
    assert_eq!(
        global.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![r.id, a.id, b.id]
    );
}

#[tokio::test]
async fn list_returns_a_cursor_only_when_the_store_had_more_than_the_limit() {
    let scope = root();
    let rows: Vec<Tenant> = (0..3).map(|_| child(&scope)).collect();
    let cursor = Uuid::now_v7();
    let limit = Limit::new(Some(2), 50, 100).unwrap();
    let caller = scoped_caller(&scope, Scope::Read);

    for (returned, expected_len, expected_next) in [
        (3, 2, Some(rows[1].id)),
        (2, 2, None),
        (1, 1, None),
        (0, 0, None),
    ] {
        let mut store = MockTenantStore::new();
        let page: Vec<Tenant> = rows[..returned].to_vec();
        let subtree = scope.ancestry_path.clone();
        store
            .expect_list()
            .withf(move |s, after, lim| {
                s.as_ref() == Some(&subtree) && *after == Some(cursor) && lim.fetch() == 3
            })
            .times(1)
            .returning(move |_, _, _| Ok(page.clone()));

        let (got, next) = tenant_service(store)
            .list(&caller, Some(cursor), limit)
            .await
            .unwrap();

        assert_eq!(got, rows[..expected_len].to_vec(), "{returned} rows");
        assert_eq!(next, expected_next, "{returned} rows");
    }
}

#[tokio::test]
async fn list_by_a_global_actor_is_not_restricted_to_a_subtree() {
    let mut store = MockTenantStore::new();
    store
        .expect_list()
        .withf(|s, after, lim| s.is_none() && after.is_none() && lim.fetch() == 51)
        .times(1)
        .returning(|_, _, _| Ok(Vec::new()));

    let (rows, next) = tenant_service(store)
        .list(&admin(), None, Limit::new(None, 50, 100).unwrap())
        .await
        .unwrap();

    assert!(rows.is_empty());
    assert_eq!(next, None);
}

// ---------------------------------------------------------------------------------------
// ConfigService
// ---------------------------------------------------------------------------------------

fn config_service(
    known: &[&Tenant],
    store: MockConfigStore,
    keys: &SharedKeyring,
) -> ConfigService {
    ConfigService::new(
        Arc::new(tenant_service(tenant_store(known))),
        Arc::new(store),
        keys.clone(),
        clock(),
    )
}

fn stored_entry(tenant_id: Uuid, key: &str, value: StoredValue, locked: bool) -> StoredConfigEntry {
    StoredConfigEntry {
        tenant_id,
        key: key.to_owned(),
        value,
        locked,
        created_at: EARLIER,
        updated_at: EARLIER,
        version: 1,
    }
}

fn encrypted(keys: &SharedKeyring, value: &Value) -> StoredValue {
    StoredValue::Encrypted(keys.get().encrypt_str(&value.to_string()).unwrap())
}

/// A config store whose `entries_for` expects `chain` and answers `entries`.
fn config_store(chain: Vec<Uuid>, entries: Vec<StoredConfigEntry>) -> MockConfigStore {
    let mut store = MockConfigStore::new();
    // Like the real store: the entries of the tenants asked about, which must lie on the chain.
    store
        .expect_entries_for()
        .withf(move |ids| !ids.is_empty() && ids.iter().all(|i| chain.contains(i)))
        .returning(move |ids| {
            Ok(entries
                .iter()
                .filter(|e| ids.contains(&e.tenant_id))
                .cloned()
                .collect())
        });
    store
}

type Put = (StoredConfigEntry, Option<i64>, Vec<Uuid>, Journal);

#[tokio::test]
async fn put_sensitive_value_is_encrypted_and_redacted_from_the_journal() {
    const SECRET: &str = "hunter2-Zq9-very-secret";
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let (caller, key_id) = global_caller(Scope::Write);
    let value = json!({"user": "app", "password": SECRET});
    let seen: Slot<Put> = slot();
    let mut store = config_store(vec![r.id, c.id], Vec::new());
    let sink = Arc::clone(&seen);
    store.expect_put().times(1).returning(move |e, x, a, j| {
        put_in(&sink, (e.clone(), x, a, j));
        Ok(e)
    });

    let (entry, version) = config_service(&[&r, &c], store, &keys)
        .put(
            &caller,
            c.id,
            "db",
            value.clone(),
            None,
            Some(true),
            Precondition::Any,
        )
        .await
        .unwrap();
    assert_eq!(version, 1, "a new entry starts at version 1");

    // The API answer carries the value in clear; that is what config is for.
    assert_eq!(entry.value, value);
    assert!(entry.sensitive && !entry.inherited && !entry.locked);

    let (stored, expected, ancestors, journal) = taken(&seen);
    assert_eq!(expected, None, "a new entry expects none stored");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.tenant_id, c.id);
    assert_eq!(stored.key, "db");
    assert!(!stored.locked);
    assert_eq!(ancestors, vec![r.id]);
    let StoredValue::Encrypted(cipher) = &stored.value else {
        panic!(
            "a sensitive value must be stored encrypted: {:?}",
            stored.value
        );
    };
    assert!(!cipher.contains(SECRET));
    let clear = keys.get().decrypt_str(cipher).unwrap();
    assert_eq!(clear, serde_json::to_string(&value).unwrap());
    assert_eq!(serde_json::from_str::<Value>(&clear).unwrap(), value);

    assert_eq!(journal.action, "config.updated");
    assert_eq!(journal.resource_type, "config");
    assert_eq!(journal.resource_id, Some(format!("{}/db", c.id)));
    assert_eq!(journal.tenant_id, Some(c.id));
    assert_eq!(journal.actor_id, key_id.to_string());
    assert_eq!(journal.meta, meta());
    assert_eq!(journal.before, None);
    let after = journal.after.clone().expect("after-state");
    assert_eq!(after["value"], json!(REDACTED));
    assert_eq!(after["sensitive"], json!(true));
    assert_eq!(after["key"], json!("db"));
    let event = journal.event.clone().expect("an event");
    assert_eq!(event.event_type, "config.updated");
    assert_eq!(event.tenant_id, Some(c.id));
    assert_eq!(event.payload["value"], json!(REDACTED));
    assert_eq!(event.payload, after);
    let text = journal_text(&journal);
    assert!(
        !text.contains(SECRET),
        "secret leaked into the journal: {text}"
    );
    assert!(
        !text.contains("\"app\""),
        "value leaked into the journal: {text}"
    );
}

#[tokio::test]
async fn put_over_an_own_sensitive_key_stays_sensitive_and_redacts_both_states() {
    const OLD: &str = "old-secret-4f1c";
    const NEW: &str = "new-secret-9b2e";
    let keys = keyring();
    let t = root();
    let own = stored_entry(t.id, "token", encrypted(&keys, &json!(OLD)), false);
    let seen: Slot<Put> = slot();
    let mut store = config_store(vec![t.id], vec![own]);
    let sink = Arc::clone(&seen);
    store.expect_put().times(1).returning(move |e, x, a, j| {
        put_in(&sink, (e.clone(), x, a, j));
        Ok(e)
    });

    let (_, version) = config_service(&[&t], store, &keys)
        .put(
            &admin(),
            t.id,
            "token",
            json!(NEW),
            None,
            None,
            Precondition::Any,
        )
        .await
        .unwrap();

    let (stored, expected, ancestors, journal) = taken(&seen);
    assert_eq!(expected, Some(1), "replaces the version it read");
    assert_eq!((stored.version, version), (2, 2));
    assert!(ancestors.is_empty());
    let StoredValue::Encrypted(cipher) = &stored.value else {
        panic!("still sensitive, so still encrypted: {:?}", stored.value);
    };
    assert_eq!(
        keys.get().decrypt_str(cipher).unwrap(),
        json!(NEW).to_string()
    );
    assert_eq!(journal.before.as_ref().unwrap()["value"], json!(REDACTED));
    assert_eq!(journal.after.as_ref().unwrap()["value"], json!(REDACTED));
    let text = journal_text(&journal);
    assert!(!text.contains(OLD) && !text.contains(NEW), "{text}");
}

#[tokio::test]
async fn put_of_a_key_locked_by_an_ancestor_is_refused() {
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let mut store = config_store(
        vec![r.id, c.id],
        vec![stored_entry(
            r.id,
            "region",
            StoredValue::Plain(json!("eu")),
            true,
        )],
    );
    store.expect_put().times(0);

    let err = config_service(&[&r, &c], store, &keys)
        .put(
            &admin(),
            c.id,
            "region",
            json!("us"),
            None,
            None,
            Precondition::Any,
        )
        .await
        .unwrap_err();

    match err {
        TenancyError::ConfigLocked(key) => assert_eq!(key, "region"),
        other => panic!("expected ConfigLocked, got {other:?}"),
    }
}

#[tokio::test]
async fn put_rejects_an_invalid_key() {
    let keys = keyring();
    let t = root();
    let mut store = MockConfigStore::new();
    store.expect_put().times(0);
    store.expect_entries_for().times(0);

    let err = config_service(&[&t], store, &keys)
        .put(
            &admin(),
            t.id,
            "bad key",
            json!(1),
            None,
            None,
            Precondition::Any,
        )
        .await
        .unwrap_err();

    assert_validation(err, "key");
}

#[tokio::test]
async fn resolution_flows_root_to_leaf_and_locks_win() {
    let keys = keyring();
    let r = root();
    let c = child(&r);
    // Deliberately leaf-first: the service must order by the ancestry chain.
    let entries = vec![
        stored_entry(c.id, "a", StoredValue::Plain(json!(2)), false),
        stored_entry(c.id, "b", StoredValue::Plain(json!(20)), false),
        stored_entry(r.id, "a", StoredValue::Plain(json!(1)), false),
        stored_entry(r.id, "b", StoredValue::Plain(json!(10)), true),
        stored_entry(r.id, "s", encrypted(&keys, &json!("shh")), false),
    ];
    let store = config_store(vec![r.id, c.id], entries);

    let resolved = config_service(&[&r, &c], store, &keys)
        .resolved(&admin(), c.id)
        .await
        .unwrap();

    assert_eq!(resolved.len(), 3);
    let a = &resolved["a"];
    assert_eq!(a.value, json!(2));
    assert_eq!(a.source_tenant_id, c.id);
    assert!(!a.inherited && !a.locked && !a.sensitive);
    let b = &resolved["b"];
    assert_eq!(b.value, json!(10));
    assert_eq!(b.source_tenant_id, r.id);
    assert!(b.inherited && b.locked);
    let s = &resolved["s"];
    assert_eq!(s.value, json!("shh"));
    assert!(s.inherited && s.sensitive);
}

#[tokio::test]
async fn resolution_at_the_root_sees_only_its_own_entries() {
    let keys = keyring();
    let r = root();
    let store = config_store(
        vec![r.id],
        vec![stored_entry(r.id, "a", StoredValue::Plain(json!(1)), true)],
    );

    let resolved = config_service(&[&r], store, &keys)
        .resolved(&admin(), r.id)
        .await
        .unwrap();

    let a = &resolved["a"];
    assert_eq!(a.value, json!(1));
    assert!(!a.inherited && a.locked);
}

#[tokio::test]
async fn delete_of_an_inherited_only_key_is_not_found() {
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let mut store = config_store(
        vec![r.id, c.id],
        vec![stored_entry(r.id, "a", StoredValue::Plain(json!(1)), false)],
    );
    store.expect_delete().times(0);

    let err = config_service(&[&r, &c], store, &keys)
        .delete(&admin(), c.id, "a", Precondition::Any)
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::ConfigNotFound), "{err:?}");
}

#[tokio::test]
async fn delete_of_an_own_sensitive_key_journals_a_redacted_before_state() {
    const SECRET: &str = "sk-live-0ff1ce-secret";
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let seen: Slot<(Uuid, String, i64, Journal)> = slot();
    let mut store = config_store(
        vec![r.id, c.id],
        vec![
            stored_entry(r.id, "token", StoredValue::Plain(json!("parent")), false),
            stored_entry(c.id, "token", encrypted(&keys, &json!(SECRET)), false),
        ],
    );
    let sink = Arc::clone(&seen);
    store.expect_delete().times(1).returning(move |t, k, e, j| {
        put_in(&sink, (t, k, e, j));
        Ok(())
    });

    config_service(&[&r, &c], store, &keys)
        .delete(&admin(), c.id, "token", Precondition::Any)
        .await
        .unwrap();

    let (tenant_id, key, expected, journal) = taken(&seen);
    assert_eq!((tenant_id, key.as_str(), expected), (c.id, "token", 1));
    assert_eq!(journal.action, "config.deleted");
    assert_eq!(journal.resource_id, Some(format!("{}/token", c.id)));
    assert_eq!(journal.tenant_id, Some(c.id));
    assert_eq!(journal.after, None);
    let before = journal.before.clone().expect("before-state");
    assert_eq!(before["value"], json!(REDACTED));
    assert_eq!(before["sensitive"], json!(true));
    let event = journal.event.clone().expect("an event");
    assert_eq!(event.event_type, "config.deleted");
    assert_eq!(event.tenant_id, Some(c.id));
    assert_eq!(event.payload["key"], json!("token"));
    assert_eq!(event.payload["previous"], before);
    let text = journal_text(&journal);
    assert!(
        !text.contains(SECRET),
        "secret leaked into the journal: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// PermissionService
// ---------------------------------------------------------------------------------------

fn permission_service(known: &[&Tenant], store: MockPermissionStore) -> PermissionService {
    PermissionService::new(
        Arc::new(tenant_service(tenant_store(known))),
        Arc::new(store),
        clock(),
    )
}

fn policy(tenant_id: Uuid, mode: PermissionMode) -> PermissionPolicy {
    PermissionPolicy {
        id: Uuid::now_v7(),
        tenant_id,
        key: "billing.export".into(),
        value: json!(true),
        mode,
        created_at: EARLIER,
        updated_at: EARLIER,
        version: 1,
    }
}

/// A permission store whose `get` knows exactly these policies.
fn permission_store(known: &[&PermissionPolicy]) -> MockPermissionStore {
    let map: HashMap<Uuid, PermissionPolicy> = known.iter().map(|p| (p.id, (*p).clone())).collect();
    let mut store = MockPermissionStore::new();
    store
        .expect_get()
        .returning(move |id| Ok(map.get(&id).cloned()));
    store
}

#[tokio::test]
async fn permission_create_rejects_a_bad_mode() {
    let t = root();
    for mode in ["locked", "OWNED", ""] {
        let mut store = MockPermissionStore::new();
        store.expect_create().times(0);
        let err = permission_service(&[&t], store)
            .create(
                &admin(),
                t.id,
                NewPermission {
                    key: "billing.export".into(),
                    value: json!(true),
                    mode: mode.into(),
                },
            )
            .await
            .unwrap_err();
        assert_validation(err, "mode");
    }
}

#[tokio::test]
async fn permission_create_journals_permission_created() {
    let t = root();
    let seen: Slot<(PermissionPolicy, Journal)> = slot();
    let mut store = MockPermissionStore::new();
    let sink = Arc::clone(&seen);
    store.expect_create().times(1).returning(move |p, j| {
        put_in(&sink, (p, j));
        Ok(())
    });

    let created = permission_service(&[&t], store)
        .create(
            &admin(),
            t.id,
            NewPermission {
                key: "billing.export".into(),
                value: json!({"max": 3}),
                mode: "DELEGATED".into(),
            },
        )
        .await
        .unwrap();

    let (stored, journal) = taken(&seen);
    assert_eq!(stored, created);
    assert_eq!(stored.tenant_id, t.id);
    assert_eq!(stored.mode, PermissionMode::Delegated);
    assert_eq!(journal.action, "permission.created");
    assert_eq!(journal.resource_type, "permission");
    assert_eq!(journal.resource_id, Some(stored.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    let after = journal.after.clone().expect("after-state");
    assert_eq!(after["mode"], json!("DELEGATED"));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "permission.created");
    assert_eq!(event.payload, after);
}

#[tokio::test]
async fn a_policy_of_another_tenant_is_not_found() {
    let mine = root();
    let other = root();
    let foreign = policy(other.id, PermissionMode::Inherited);

    let mut store = permission_store(&[&foreign]);
    store.expect_update().times(0);
    store.expect_delete().times(0);
    let svc = permission_service(&[&mine, &other], store);

    let err = svc
        .update(
            &admin(),
            mine.id,
            foreign.id,
            Some(json!(false)),
            Some("LOCKED".into()),
            Precondition::Any,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TenancyError::PermissionNotFound), "{err:?}");

    let err = svc
        .delete(&admin(), mine.id, foreign.id, Precondition::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, TenancyError::PermissionNotFound), "{err:?}");

    let err = svc
        .delete(&admin(), mine.id, Uuid::now_v7(), Precondition::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, TenancyError::PermissionNotFound), "{err:?}");
}

#[tokio::test]
async fn permission_update_journals_before_and_after() {
    let t = root();
    let p = policy(t.id, PermissionMode::Inherited);
    let seen: Slot<(PermissionPolicy, i64, Journal)> = slot();
    let mut store = permission_store(&[&p]);
    let sink = Arc::clone(&seen);
    store.expect_update().times(1).returning(move |p, e, j| {
        put_in(&sink, (p, e, j));
        Ok(e + 1)
    });

    let updated = permission_service(&[&t], store)
        .update(
            &admin(),
            t.id,
            p.id,
            None,
            Some("LOCKED".into()),
            Precondition::Any,
        )
        .await
        .unwrap();

    let (stored, expected, journal) = taken(&seen);
    assert_eq!(expected, p.version, "the write expects the version it read");
    assert_eq!(updated.version, p.version + 1);
    assert_eq!(
        PermissionPolicy {
            version: updated.version,
            ..stored.clone()
        },
        updated
    );
    assert_eq!(stored.mode, PermissionMode::Locked);
    assert_eq!(stored.value, p.value);
    assert_eq!(stored.updated_at, NOW);
    assert_eq!(journal.action, "permission.updated");
    assert_eq!(journal.resource_id, Some(p.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    let before = journal.before.clone().expect("before-state");
    let after = journal.after.clone().expect("after-state");
    assert_eq!(before, serde_json::to_value(&p).unwrap());
    assert_eq!(before["mode"], json!("INHERITED"));
    assert_eq!(after["mode"], json!("LOCKED"));
    let event = journal.event.expect("an event");
    assert_eq!(event.event_type, "permission.updated");
    assert_eq!(event.tenant_id, Some(t.id));
    assert_eq!(event.payload, after);
}

#[tokio::test]
async fn permission_update_with_a_bad_mode_or_no_change_never_writes() {
    let t = root();
    let p = policy(t.id, PermissionMode::Inherited);
    let mut store = permission_store(&[&p]);
    store.expect_update().times(0);
    let svc = permission_service(&[&t], store);

    let err = svc
        .update(
            &admin(),
            t.id,
            p.id,
            None,
            Some("sometimes".into()),
            Precondition::Any,
        )
        .await
        .unwrap_err();
    assert_validation(err, "mode");

    let same = svc
        .update(
            &admin(),
            t.id,
            p.id,
            Some(p.value.clone()),
            Some("INHERITED".into()),
            Precondition::Any,
        )
        .await
        .unwrap();
    assert_eq!(same, p);
}

// ---------------------------------------------------------------------------------------
// ApiKeyService
// ---------------------------------------------------------------------------------------

const BOOTSTRAP: &str = "bootstrap-admin-key-0123456789abcdef";

fn api_key_service(store: MockApiKeyStore, known: &[&Tenant]) -> ApiKeyService {
    ApiKeyService::new(
        Arc::new(store),
        Arc::new(tenant_service(tenant_store(known))),
        clock(),
        Some(BOOTSTRAP),
    )
}

fn api_key(tenant_id: Option<Uuid>, scopes: Vec<Scope>) -> ApiKey {
    ApiKey {
        id: Uuid::now_v7(),
        tenant_id,
        name: Some("ci".into()),
        key_prefix: "sk_abcdefg000000000000000000000000000000000000".into(),
        scopes,
        created_at: EARLIER,
        last_used_at: None,
        revoked_at: None,
    }
}

/// A key store that must be asked exactly once, by the digest of `presented`.
fn key_store_finding(presented: &str, found: Option<KeyPrincipal>) -> MockApiKeyStore {
    let digest = sha256_hex(presented.as_bytes());
    let presented = presented.to_owned();
    let mut store = MockApiKeyStore::new();
    store
        .expect_find_by_hash()
        .withf(move |h| *h == digest && !h.contains(&presented))
        .times(1)
        .returning(move |_| Ok(found.clone()));
    store
}

#[tokio::test]
async fn the_bootstrap_key_is_a_global_admin_without_a_lookup() {
    let mut store = MockApiKeyStore::new();
    store.expect_find_by_hash().times(0);
    store.expect_touch().times(0);

    let actor = api_key_service(store, &[])
        .authenticate(BOOTSTRAP)
        .await
        .unwrap();

    assert_eq!(
        actor,
        Some(Actor {
            kind: ActorKind::Bootstrap,
            scope: Scope::Admin,
            tenant: None,
        })
    );
}

#[tokio::test]
async fn a_key_no_minted_key_could_be_is_refused_without_a_lookup() {
    for presented in [
        "x",
        "sk_short",
        "Bearer-ish garbage that is long enough to be anything at all",
        "sk_0000000000000000000000000000000000000000000+",
        "sk_00000000000000000000000000000000000000000000",
    ] {
        let mut store = MockApiKeyStore::new();
        store.expect_find_by_hash().times(0);
        store.expect_touch().times(0);
        let actor = api_key_service(store, &[])
            .authenticate(presented)
            .await
            .unwrap();
        assert_eq!(actor, None, "{presented}");
    }
}

#[tokio::test]
async fn an_unknown_key_authenticates_nobody() {
    let presented = "sk_unknown_key_that_nobody_minted_000000000000";
    let mut store = key_store_finding(presented, None);
    store.expect_touch().times(0);

    let actor = api_key_service(store, &[])
        .authenticate(presented)
        .await
        .unwrap();

    assert_eq!(actor, None);
}

#[tokio::test]
async fn a_revoked_key_authenticates_nobody() {
    let presented = "sk_revoked_key_0000000000000000000000000000000";
    let mut key = api_key(None, vec![Scope::Admin]);
    key.revoked_at = Some(EARLIER);
    let mut store = key_store_finding(
        presented,
        Some(KeyPrincipal {
            key,
            tenant_path: None,
        }),
    );
    store.expect_touch().times(0);

    let actor = api_key_service(store, &[])
        .authenticate(presented)
        .await
        .unwrap();

    assert_eq!(actor, None);
}

#[tokio::test]
async fn a_scoped_key_whose_tenant_vanished_authenticates_nobody() {
    let presented = "sk_orphaned_key_000000000000000000000000000000";
    let mut store = key_store_finding(
        presented,
        Some(KeyPrincipal {
            key: api_key(Some(Uuid::now_v7()), vec![Scope::Write]),
            tenant_path: None,
        }),
    );
    store.expect_touch().times(0);

    let actor = api_key_service(store, &[])
        .authenticate(presented)
        .await
        .unwrap();

    assert_eq!(actor, None);
}

#[tokio::test]
async fn a_stored_key_authenticates_as_itself_with_its_highest_scope() {
    let presented = "sk_live_key_1234567890abcdefghijklmnopqrstuv00";
    let t = child(&root());
    let key = api_key(Some(t.id), vec![Scope::Read, Scope::Write]);
    let key_id = key.id;
    let mut store = key_store_finding(
        presented,
        Some(KeyPrincipal {
            key,
            tenant_path: Some(t.ancestry_path.clone()),
        }),
    );
    store
        .expect_touch()
        .withf(move |id| *id == key_id)
        .times(1)
        .returning(|_| Ok(()));

    let actor = api_key_service(store, &[])
        .authenticate(presented)
        .await
        .unwrap();

    assert_eq!(
        actor,
        Some(Actor {
            kind: ActorKind::ApiKey(key_id),
            scope: Scope::Write,
            tenant: Some(TenantScope {
                id: t.id,
                path: t.ancestry_path.clone(),
            }),
        })
    );
}

#[tokio::test]
async fn a_failed_touch_does_not_fail_authentication() {
    let presented = "sk_global_key_1234567890abcdefghijklmnopqrs000";
    let key = api_key(None, vec![Scope::Admin, Scope::Read]);
    let key_id = key.id;
    let mut store = key_store_finding(
        presented,
        Some(KeyPrincipal {
            key,
            tenant_path: None,
        }),
    );
    store
        .expect_touch()
        .times(1)
        .returning(|_| Err(StoreError::Unavailable));

    let actor = api_key_service(store, &[])
        .authenticate(presented)
        .await
        .unwrap()
        .expect("an actor");

    assert_eq!(actor.kind, ActorKind::ApiKey(key_id));
    assert_eq!(actor.scope, Scope::Admin);
    assert!(actor.is_global());
}

#[tokio::test]
async fn only_a_global_admin_may_mint_keys() {
    let t = root();
    let callers = [
        scoped_caller(&t, Scope::Admin),
        global_caller(Scope::Write).0,
        global_caller(Scope::Read).0,
    ];
    for caller in callers {
        let mut store = MockApiKeyStore::new();
        store.expect_create().times(0);
        let err = api_key_service(store, &[&t])
            .create(&caller, None, Some("ci".into()), None)
            .await
            .unwrap_err();
        assert!(matches!(err, TenancyError::Forbidden(_)), "{err:?}");
    }
}

#[tokio::test]
async fn minting_stores_only_the_digest_and_journals_no_plaintext() {
    let t = child(&root());
    let (caller, admin_id) = global_caller(Scope::Admin);
    let seen: Slot<(ApiKey, String, Journal)> = slot();
    let mut store = MockApiKeyStore::new();
    let sink = Arc::clone(&seen);
    store.expect_create().times(1).returning(move |k, h, j| {
        put_in(&sink, (k, h, j));
        Ok(())
    });

    let minted = api_key_service(store, &[&t])
        .create(
            &caller,
            Some(t.id),
            Some("deploy".into()),
            Some(vec!["write".into(), "read".into()]),
        )
        .await
        .unwrap();

    let (stored, hash, journal) = taken(&seen);
    let body = minted
        .plaintext
        .strip_prefix("sk_")
        .expect("keys start with sk_");
    assert!(body.len() >= 43, "{}", minted.plaintext);
    assert_eq!(hash, sha256_hex(minted.plaintext.as_bytes()));
    assert_ne!(hash, minted.plaintext);
    assert_eq!(stored, minted.key);
    assert_eq!(stored.tenant_id, Some(t.id));
    assert_eq!(stored.scopes, vec![Scope::Read, Scope::Write]);
    assert_eq!(stored.created_at, NOW);
    assert!(minted.plaintext.starts_with(&stored.key_prefix));
    assert!(stored.key_prefix.len() < minted.plaintext.len());

    assert_eq!(journal.action, "api_key.created");
    assert_eq!(journal.resource_type, "api_key");
    assert_eq!(journal.resource_id, Some(stored.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    assert_eq!(journal.actor_id, admin_id.to_string());
    let after = journal.after.clone().expect("after-state");
    assert_eq!(after["id"], json!(stored.id.to_string()));
    assert!(
        after.get("last_used_at").is_none(),
        "usage stamps stay out of audit states: {after}"
    );
    let text = journal_text(&journal);
    assert!(
        !text.contains(&minted.plaintext),
        "plaintext in journal: {text}"
    );
    assert!(!text.contains(body), "plaintext in journal: {text}");
    assert!(!text.contains(&hash), "digest in journal: {text}");
}

#[tokio::test]
async fn minting_for_an_unknown_tenant_is_not_found() {
    let mut store = MockApiKeyStore::new();
    store.expect_create().times(0);

    let err = api_key_service(store, &[])
        .create(&admin(), Some(Uuid::now_v7()), None, None)
        .await
        .unwrap_err();

    assert!(matches!(err, TenancyError::TenantNotFound), "{err:?}");
}

#[tokio::test]
async fn overriding_an_ancestors_sensitive_key_stays_sensitive() {
    const SECRET: &str = "child-override-secret-value";
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let inherited = keys.get().encrypt_str("\"root-secret\"").unwrap();
    let seen: Slot<Put> = slot();
    let mut store = config_store(
        vec![r.id, c.id],
        vec![stored_entry(
            r.id,
            "token",
            StoredValue::Encrypted(inherited),
            false,
        )],
    );
    let sink = seen.clone();
    store.expect_put().times(1).returning(move |e, x, a, j| {
        *sink.lock().unwrap() = Some((e.clone(), x, a, j));
        Ok(e)
    });
    let (entry, _) = config_service(&[&r, &c], store, &keys)
        .put(
            &admin(),
            c.id,
            "token",
            json!(SECRET),
            None,
            None,
            Precondition::Any,
        )
        .await
        .unwrap();
    assert!(entry.sensitive);
    let (stored, expected, _, journal) = seen.lock().unwrap().take().unwrap();
    assert_eq!(expected, None, "the child had no entry of its own");
    assert!(matches!(stored.value, StoredValue::Encrypted(_)));
    let shown = format!(
        "{:?}{:?}{:?}",
        journal.before,
        journal.after,
        journal.event.map(|e| e.payload)
    );
    assert!(!shown.contains(SECRET), "{shown}");
}

#[tokio::test]
async fn an_own_entry_hidden_by_an_ancestors_lock_can_still_be_deleted() {
    let keys = keyring();
    let r = root();
    let c = child(&r);
    let mut store = config_store(
        vec![r.id, c.id],
        vec![
            stored_entry(r.id, "quota", StoredValue::Plain(json!(10)), true),
            stored_entry(c.id, "quota", StoredValue::Plain(json!(99)), false),
        ],
    );
    let deleted: Slot<(Uuid, String, i64)> = slot();
    let sink = deleted.clone();
    store.expect_delete().times(1).returning(move |t, k, e, _| {
        *sink.lock().unwrap() = Some((t, k, e));
        Ok(())
    });
    config_service(&[&r, &c], store, &keys)
        .delete(&admin(), c.id, "quota", Precondition::Any)
        .await
        .unwrap();
    assert_eq!(
        deleted.lock().unwrap().take(),
        Some((c.id, "quota".to_owned(), 1))
    );
}

// ---------------------------------------------------------------------------------------
// Optimistic versions: If-Match and re-reads after a stale write
// ---------------------------------------------------------------------------------------

fn assert_precondition_failed<T: std::fmt::Debug>(got: std::result::Result<T, TenancyError>) {
    match got {
        Err(TenancyError::PreconditionFailed(_)) => {}
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stale_if_match_fails_every_tenant_write_without_writing() {
    let r = root();
    let mut t = child(&r);
    t.version = 3;
    let new_parent = root();
    let mut store = tenant_store(&[&r, &t, &new_parent]);
    let seen: Slot<(Tenant, Journal)> = slot();
    modify_applies_to(&mut store, t.clone(), Some(Arc::clone(&seen)), 2);
    store.expect_archive().times(0);
    store.expect_move_subtree().times(0);
    let svc = tenant_service(store);
    let patch = TenantPatch {
        name: Some("Renamed".into()),
        ..TenantPatch::default()
    };

    for stale in [Precondition::Version(2), Precondition::Never] {
        assert_precondition_failed(svc.update(&admin(), t.id, patch.clone(), stale).await);
        assert_precondition_failed(svc.archive(&admin(), t.id, stale).await);
        assert_precondition_failed(svc.move_to(&admin(), t.id, new_parent.id, stale).await);
    }
    assert!(nothing_written(&seen));
}

/// A tenant store whose `get` answers `first` once, then `then` for the same id.
fn tenant_store_changing(first: &Tenant, then: &Tenant) -> MockTenantStore {
    let mut store = MockTenantStore::new();
    let mut seq = mockall::Sequence::new();
    let (a, b) = (first.clone(), then.clone());
    store
        .expect_get()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(Some(a.clone())));
    store
        .expect_get()
        .in_sequence(&mut seq)
        .returning(move |_| Ok(Some(b.clone())));
    store
}

#[tokio::test]
async fn update_computes_from_the_locked_state() {
    let t1 = root();
    // Someone else changed the metadata after any earlier read; the lock hands over theirs.
    let t2 = Tenant {
        metadata: json!({"tier": "gold"}),
        updated_at: EARLIER + time::Duration::hours(1),
        version: 2,
        ..t1.clone()
    };
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = tenant_store(&[&t1]);
    modify_applies_to(&mut store, t2.clone(), Some(Arc::clone(&seen)), 1);

    let updated = tenant_service(store)
        .update(
            &admin(),
            t1.id,
            TenantPatch {
                slug: Some("renamed".into()),
                ..TenantPatch::default()
            },
            Precondition::Any,
        )
        .await
        .unwrap();

    let (stored, journal) = taken(&seen);
    assert_eq!(
        stored.metadata,
        json!({"tier": "gold"}),
        "keeps the other change"
    );
    assert_eq!(stored.slug, "renamed");
    assert_eq!(updated.version, 3);
    assert_eq!(updated.metadata, json!({"tier": "gold"}));
    assert_eq!(updated.slug, "renamed");
    assert_eq!(journal.before, Some(serde_json::to_value(&t2).unwrap()));
    assert_eq!(journal.after, Some(serde_json::to_value(&stored).unwrap()));
}

#[tokio::test]
async fn a_stale_if_match_is_refused_under_the_lock() {
    let t = Tenant {
        version: 5,
        ..root()
    };
    let seen: Slot<(Tenant, Journal)> = slot();
    let mut store = MockTenantStore::new();
    modify_applies_to(&mut store, t.clone(), Some(Arc::clone(&seen)), 1);

    let got = tenant_service(store)
        .update(
            &admin(),
            t.id,
            TenantPatch {
                name: Some("Renamed".into()),
                ..TenantPatch::default()
            },
            Precondition::Version(4),
        )
        .await;

    assert_precondition_failed(got);
    assert!(nothing_written(&seen));
}

#[tokio::test]
async fn archive_rereads_after_a_stale_write() {
    let t1 = root();
    let t2 = Tenant {
        name: "Renamed meanwhile".into(),
        version: 5,
        ..t1.clone()
    };
    let mut store = tenant_store_changing(&t1, &t2);
    let mut seq = mockall::Sequence::new();
    store
        .expect_archive()
        .withf(|_, expected, _, _| *expected == 1)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Err(TenancyError::Stale));
    let seen: Slot<(i64, Journal)> = slot();
    let sink = Arc::clone(&seen);
    store
        .expect_archive()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, e, _, j| {
            put_in(&sink, (e, j));
            Ok(())
        });

    tenant_service(store)
        .archive(&admin(), t1.id, Precondition::Any)
        .await
        .unwrap();

    let (expected, journal) = taken(&seen);
    assert_eq!(expected, 5);
    let before = journal.before.expect("before-state");
    assert_eq!(before, serde_json::to_value(&t2).unwrap());
    assert_eq!(before["name"], json!("Renamed meanwhile"));
}

#[tokio::test]
async fn a_stale_if_match_fails_config_and_permission_writes_without_writing() {
    let keys = keyring();
    let t = root();
    let mut entry = stored_entry(t.id, "quota", StoredValue::Plain(json!(1)), false);
    entry.version = 4;
    let mut store = config_store(vec![t.id], vec![entry]);
    store.expect_put().times(0);
    store.expect_delete().times(0);
    let config = config_service(&[&t], store, &keys);
    let stale = Precondition::Version(3);
    assert_precondition_failed(
        config
            .put(&admin(), t.id, "quota", json!(2), None, None, stale)
            .await,
    );
    assert_precondition_failed(config.delete(&admin(), t.id, "quota", stale).await);
    // If-Match on a key the tenant does not have: nothing to match.
    assert_precondition_failed(
        config
            .put(
                &admin(),
                t.id,
                "other",
                json!(2),
                None,
                None,
                Precondition::Version(1),
            )
            .await,
    );

    let mut p = policy(t.id, PermissionMode::Inherited);
    p.version = 4;
    let mut store = permission_store(&[&p]);
    store.expect_update().times(0);
    store.expect_delete().times(0);
    let permissions = permission_service(&[&t], store);
    assert_precondition_failed(
        permissions
            .update(&admin(), t.id, p.id, None, Some("LOCKED".into()), stale)
            .await,
    );
    assert_precondition_failed(permissions.delete(&admin(), t.id, p.id, stale).await);
}

#[tokio::test]
async fn config_put_rereads_after_a_stale_write() {
    let keys = keyring();
    let t = root();
    let v1 = stored_entry(t.id, "quota", StoredValue::Plain(json!(1)), false);
    let v2 = StoredConfigEntry {
        value: StoredValue::Plain(json!(5)),
        version: 2,
        ..v1.clone()
    };
    let mut store = MockConfigStore::new();
    let mut reads = mockall::Sequence::new();
    store
        .expect_entries_for()
        .times(1)
        .in_sequence(&mut reads)
        .returning(move |_| Ok(vec![v1.clone()]));
    store
        .expect_entries_for()
        .in_sequence(&mut reads)
        .returning(move |_| Ok(vec![v2.clone()]));
    let mut writes = mockall::Sequence::new();
    store
        .expect_put()
        .withf(|_, expected, _, _| *expected == Some(1))
        .times(1)
        .in_sequence(&mut writes)
        .returning(|_, _, _, _| Err(TenancyError::Stale));
    let seen: Slot<Put> = slot();
    let sink = Arc::clone(&seen);
    store
        .expect_put()
        .times(1)
        .in_sequence(&mut writes)
        .returning(move |e, x, a, j| {
            put_in(&sink, (e.clone(), x, a, j));
            Ok(e)
        });

    let (entry, version) = config_service(&[&t], store, &keys)
        .put(
            &admin(),
            t.id,
            "quota",
            json!(9),
            None,
            None,
            Precondition::Any,
        )
        .await
        .unwrap();

    assert_eq!(entry.value, json!(9));
    assert_eq!(version, 3);
    let (stored, expected, _, journal) = taken(&seen);
    assert_eq!((expected, stored.version), (Some(2), 3));
    assert_eq!(journal.before.expect("before-state")["value"], json!(5));
}

#[tokio::test]
async fn permission_delete_rereads_after_a_stale_write() {
    let t = root();
    let p1 = policy(t.id, PermissionMode::Inherited);
    let p2 = PermissionPolicy {
        mode: PermissionMode::Locked,
        version: 2,
        ..p1.clone()
    };
    let mut store = MockPermissionStore::new();
    let mut reads = mockall::Sequence::new();
    let first = p1.clone();
    store
        .expect_get()
        .times(1)
        .in_sequence(&mut reads)
        .returning(move |_| Ok(Some(first.clone())));
    let then = p2.clone();
    store
        .expect_get()
        .in_sequence(&mut reads)
        .returning(move |_| Ok(Some(then.clone())));
    let mut writes = mockall::Sequence::new();
    store
        .expect_delete()
        .withf(|_, expected, _| *expected == 1)
        .times(1)
        .in_sequence(&mut writes)
        .returning(|_, _, _| Err(TenancyError::Stale));
    let seen: Slot<(Uuid, i64, Journal)> = slot();
    let sink = Arc::clone(&seen);
    store
        .expect_delete()
        .times(1)
        .in_sequence(&mut writes)
        .returning(move |id, e, j| {
            put_in(&sink, (id, e, j));
            Ok(())
        });

    permission_service(&[&t], store)
        .delete(&admin(), t.id, p1.id, Precondition::Any)
        .await
        .unwrap();

    let (id, expected, journal) = taken(&seen);
    assert_eq!((id, expected), (p1.id, 2));
    assert_eq!(journal.before, Some(serde_json::to_value(&p2).unwrap()));
}

// ---------------------------------------------------------------------------------------
// Encryption keys: a rotation elsewhere, a key this process does not hold
// ---------------------------------------------------------------------------------------

fn master(c: char) -> String {
    c.to_string().repeat(32)
}

#[tokio::test]
async fn put_reseals_under_the_active_key_when_a_rotation_committed_meanwhile() {
    let own = stratum_crypto::EncryptionKey::derive(&master('x')).unwrap();
    let next = stratum_crypto::EncryptionKey::derive(&master('n')).unwrap();
    let keys = SharedKeyring::new(Keyring::with_keys(own.clone(), [next.clone()]));
    let r = root();
    let (caller, _) = global_caller(Scope::Write);
    let mut store = config_store(vec![r.id], Vec::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let active = next.key_id().to_owned();
    store.expect_put().times(2).returning(move |e, _, _, _| {
        let StoredValue::Encrypted(c) = &e.value else {
            panic!("not encrypted")
        };
        sink.lock().unwrap().push(c.clone());
        // Like the store: only a value under the active key commits.
        if stratum_crypto::envelope_key_id(c) == Some(active.as_str()) {
            Ok(e)
        } else {
            Err(TenancyError::Store(StoreError::KeyNotActive {
                active_key_id: active.clone(),
            }))
        }
    });
    config_service(&[&r], store, &keys)
        .put(
            &caller,
            r.id,
            "token",
            json!("s3cret"),
            None,
            Some(true),
            Precondition::Any,
        )
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        stratum_crypto::envelope_key_id(&seen[0]),
        Some(own.key_id())
    );
    assert_eq!(next.decrypt_str(&seen[1]).unwrap(), "\"s3cret\"");
    assert_eq!(
        keys.get().current().key_id(),
        next.key_id(),
        "later writes go straight to the active key"
    );
}

#[tokio::test]
async fn put_without_the_active_key_is_key_unavailable() {
    let keys = keyring();
    let r = root();
    let (caller, _) = global_caller(Scope::Write);
    let mut store = config_store(vec![r.id], Vec::new());
    store.expect_put().times(1).returning(|_, _, _, _| {
        Err(TenancyError::Store(StoreError::KeyNotActive {
            active_key_id: "0badc0de".into(),
        }))
    });
    let e = config_service(&[&r], store, &keys)
        .put(
            &caller,
            r.id,
            "token",
            json!("s3cret"),
            None,
            Some(true),
            Precondition::Any,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TenancyError::Store(StoreError::KeyUnavailable { key_id }) if key_id == "0badc0de"),
        "{e:?}"
    );
}

#[tokio::test]
async fn reading_a_secret_under_a_key_not_held_is_key_unavailable_not_crypto() {
    let keys = keyring();
    let stranger = SharedKeyring::new(Keyring::from_env_values(&master('s'), None).unwrap());
    let r = root();
    let (caller, _) = global_caller(Scope::Read);
    let entry = stored_entry(r.id, "token", encrypted(&stranger, &json!("x")), false);
    let store = config_store(vec![r.id], vec![entry]);
    let e = config_service(&[&r], store, &keys)
        .resolved(&caller, r.id)
        .await
        .unwrap_err();
    let want = stranger.get().current().key_id().to_owned();
    assert!(
        matches!(&e, TenancyError::Store(StoreError::KeyUnavailable { key_id }) if *key_id == want),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------

fn is_missing_write<T: std::fmt::Debug>(r: &Result<T, TenancyError>) -> bool {
    matches!(r, Err(TenancyError::Forbidden(m)) if m == "this key lacks the 'write' scope")
}

#[tokio::test]
async fn a_read_scoped_caller_reads_tenants_but_changes_nothing() {
    let r = root();
    let (reader, _) = global_caller(Scope::Read);
    // Only `get` is expected: any write panics the test.
    let tenants = tenant_service(tenant_store(&[&r]));
    assert_eq!(tenants.get(&reader, r.id).await.unwrap().id, r.id);
    let created = tenants
        .create(
            &reader,
            NewTenant {
                name: "Acme".into(),
                slug: "acme".into(),
                parent_id: None,
                metadata: None,
            },
        )
        .await;
    assert!(is_missing_write(&created), "{created:?}");
    let archived = tenants.archive(&reader, r.id, Precondition::Any).await;
    assert!(is_missing_write(&archived), "{archived:?}");
    let moved = tenants
        .move_to(&reader, r.id, Uuid::now_v7(), Precondition::Any)
        .await;
    assert!(is_missing_write(&moved), "{moved:?}");

    let permissions = permission_service(&[&r], MockPermissionStore::new());
    let policy = permissions
        .create(
            &reader,
            r.id,
            NewPermission {
                key: "billing.read".into(),
                value: json!(true),
                mode: "INHERITED".into(),
            },
        )
        .await;
    assert!(is_missing_write(&policy), "{policy:?}");
}
