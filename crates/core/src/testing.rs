//! Builders for the unit tests of the domain crates (the `testing` feature): callers,
//! a fixed clock, and a slot where a mock's `returning` closure parks what its port got.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::clock::MockClock;
use crate::{Actor, ActorKind, Caller, Clock, RequestMeta, Scope, TenantPath, TenantScope};

/// Where a mock's `returning` closure parks what the port received.
pub type Slot<T> = Arc<Mutex<Option<T>>>;

/// An empty slot.
pub fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

/// Parks `value` in `slot`.
pub fn put_in<T>(slot: &Slot<T>, value: T) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
}

/// What the port received; panics when it was not called.
pub fn taken<T>(slot: &Slot<T>) -> T {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| panic!("the port was not called"))
}

/// A clock that always says `now`.
pub fn fixed_clock(now: OffsetDateTime) -> Arc<dyn Clock> {
    let mut clock = MockClock::new();
    clock.expect_now().return_const(now);
    Arc::new(clock)
}

/// Request facts as a caller brings them.
pub fn meta(request_id: &str, ip: &str, user_agent: &str) -> RequestMeta {
    RequestMeta {
        request_id: Some(request_id.to_owned()),
        ip: Some(ip.to_owned()),
        user_agent: Some(user_agent.to_owned()),
    }
}

/// A caller holding API key `key_id` with `scope`, global (`tenant` `None`) or bound to the
/// subtree at `tenant` (whose leaf is the tenant's id).
pub fn key_caller(
    key_id: Uuid,
    scope: Scope,
    tenant: Option<&TenantPath>,
    meta: RequestMeta,
) -> Caller {
    Caller {
        actor: Actor {
            kind: ActorKind::ApiKey(key_id),
            scope,
            tenant: tenant.map(|path| TenantScope {
                id: path
                    .leaf()
                    .unwrap_or_else(|| panic!("a tenant path names its tenant")),
                path: path.clone(),
            }),
        },
        meta,
    }
}

/// A global caller with a fresh key and `scope`; also returns the key id a journal names.
pub fn global_caller(scope: Scope, meta: RequestMeta) -> (Caller, Uuid) {
    let key_id = Uuid::now_v7();
    (key_caller(key_id, scope, None, meta), key_id)
}

/// A caller with a fresh key and `scope`, bound to the subtree at `tenant`.
pub fn scoped_caller(tenant: &TenantPath, scope: Scope, meta: RequestMeta) -> Caller {
    key_caller(Uuid::now_v7(), scope, Some(tenant), meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_caller_is_bound_to_the_leaf_of_its_path() {
        let root = TenantPath::root(Uuid::now_v7());
        let leaf = Uuid::now_v7();
        let c = scoped_caller(&root.child(leaf), Scope::Read, RequestMeta::default());
        let t = c.actor.tenant.unwrap();
        assert_eq!(t.id, leaf);
        assert_eq!(c.actor.scope, Scope::Read);
    }

    #[test]
    fn a_slot_gives_back_what_was_parked_once() {
        let s = slot();
        put_in(&s, 7);
        assert_eq!(taken(&s), 7);
        assert!(s.lock().unwrap().is_none());
    }
}
