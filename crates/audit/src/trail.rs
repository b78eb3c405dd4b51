//! The write side of the audit log: what a mutation appends, inside its own transaction,
//! besides the change itself.
//!
//! A service (or the storage adapter it calls) hands the [`Journal`] of a change to an
//! [`AuditTrail`]. The trail applies the [`Redaction`] rules, turns the journal into an
//! [`AuditRecord`] (audit entry, and the event when the change is one webhooks hear about)
//! and gives it to the [`AuditSink`] port on the transaction the change is written in, so
//! the change, its audit entry, its event and the event's deliveries commit together or not
//! at all. The sink chooses which webhooks get a delivery; who may hear an event is the
//! [`Audience`] rule.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use stratum_core::{new_id, Journal, StoreError, TenantPath, REDACTED};
use uuid::Uuid;

/// Which fields hold secrets: their values are replaced by `"[REDACTED]"`, at any depth, in
/// every state and event payload before it is appended.
///
/// Services already redact what they know to be secret (a webhook's secret, a sensitive
/// config value); the trail's rules are the second line, so a field named like a secret
/// never reaches the log or a webhook in clear.
///
/// ```
/// use serde_json::json;
/// use stratum_audit::Redaction;
///
/// let rules = Redaction::keys(["secret", "password"]);
/// let mut state = json!({"name": "billing", "auth": {"password": "hunter2"}, "secret": "s"});
/// rules.apply(&mut state);
/// assert_eq!(
///     state,
///     json!({"name": "billing", "auth": {"password": "[REDACTED]"}, "secret": "[REDACTED]"})
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    keys: BTreeSet<String>,
}

impl Redaction {
    /// No rule: values are appended as the service built them.
    pub fn none() -> Self {
        Self::default()
    }

    /// Redacts the values of fields named `keys`.
    pub fn keys<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// Stratum's rules: a webhook's `secret` (the only secret-bearing field of the
    /// resources Stratum journals; sensitive config values are redacted by the config
    /// service, which alone knows which values are sensitive).
    pub fn stratum() -> Self {
        Self::keys(["secret"])
    }

    /// Whether a field named `key` is redacted.
    pub fn covers(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Replaces the values of the covered fields in `value`, at any depth.
    pub fn apply(&self, value: &mut Value) {
        if self.keys.is_empty() {
            return;
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.covers(k) {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.apply(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.apply(v)),
            _ => {}
        }
    }

    fn applied(&self, value: &Option<Value>) -> Option<Value> {
        value.clone().map(|mut v| {
            self.apply(&mut v);
            v
        })
    }
}

/// The tenants whose webhooks hear an event: the event's tenant and every ancestor of it,
/// plus the event's extra audience (a moved tenant's former ancestors). Global webhooks
/// (no tenant) hear every event; a tenant outside the audience hears nothing, so a sibling
/// or a descendant never hears an event of another tenant.
///
/// ```
/// use stratum_audit::Audience;
/// use stratum_core::TenantPath;
/// use uuid::Uuid;
///
/// let (root, parent, child, sibling) =
///     (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
/// let path = TenantPath::root(root).child(parent);
/// let audience = Audience::of(Some(&path), &[]);
/// assert!(audience.hears(Some(root)) && audience.hears(Some(parent)));
/// assert!(audience.hears(None), "global webhooks hear everything");
/// assert!(!audience.hears(Some(child)) && !audience.hears(Some(sibling)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    tenants: BTreeSet<Uuid>,
}

impl Audience {
    /// The audience of an event about the tenant at `path` (`None`: a global event, or a
    /// tenant that no longer exists) with `extra` tenants added.
    pub fn of(path: Option<&TenantPath>, extra: &[Uuid]) -> Self {
        let mut tenants: BTreeSet<Uuid> = extra.iter().copied().collect();
        if let Some(p) = path {
            tenants.extend(p.ids());
        }
        Self { tenants }
    }

    /// Whether a webhook of `webhook_tenant` (`None`: global) hears the event.
    pub fn hears(&self, webhook_tenant: Option<Uuid>) -> bool {
        webhook_tenant.is_none_or(|t| self.tenants.contains(&t))
    }

    /// The tenants in the audience, global webhooks aside.
    pub fn tenants(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.tenants.iter().copied()
    }
}

/// The event of an [`AuditRecord`], to put in the outbox and fan out.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Its id.
    pub id: Uuid,
    /// e.g. `tenant.created`.
    pub event_type: String,
    /// The tenant it is about (`None`: global).
    pub tenant_id: Option<Uuid>,
    /// The payload, redacted.
    pub payload: Value,
    /// Tenants that hear it besides the tenant's ancestry (see [`Audience`]).
    pub extra_audience: Vec<Uuid>,
}

/// What one change appends: its audit entry, redacted, and its event, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The audit entry's id.
    pub id: Uuid,
    /// The tenant the change belongs to.
    pub tenant_id: Option<Uuid>,
    /// Who: an API key id, `bootstrap` or `system`.
    pub actor_id: String,
    /// `api_key` or `system`.
    pub actor_type: String,
    /// e.g. `tenant.created`.
    pub action: String,
    /// e.g. `tenant`.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// State before, redacted.
    pub before_state: Option<Value>,
    /// State after, redacted.
    pub after_state: Option<Value>,
    /// `request_id`, `ip`, `user_agent`.
    pub metadata: Value,
    /// The event, when the change is one webhooks hear about.
    pub event: Option<EventRecord>,
}

impl AuditRecord {
    /// The record of `journal` with `rules` applied to both states and the event payload;
    /// fresh ids for the entry and the event.
    pub fn from_journal(journal: &Journal, rules: &Redaction) -> Self {
        let meta = &journal.meta;
        Self {
            id: new_id(),
            tenant_id: journal.tenant_id,
            actor_id: journal.actor_id.clone(),
            actor_type: journal.actor_type.clone(),
            action: journal.action.clone(),
            resource_type: journal.resource_type.clone(),
            resource_id: journal.resource_id.clone(),
            before_state: rules.applied(&journal.before),
            after_state: rules.applied(&journal.after),
            metadata: json!({
                "request_id": meta.request_id,
                "ip": meta.ip,
                "user_agent": meta.user_agent,
            }),
            event: journal.event.as_ref().map(|e| {
                let mut payload = e.payload.clone();
                rules.apply(&mut payload);
                EventRecord {
                    id: new_id(),
                    event_type: e.event_type.to_string(),
                    tenant_id: e.tenant_id,
                    payload,
                    extra_audience: e.extra_audience.clone(),
                }
            }),
        }
    }
}

/// The write port of the audit log, on a storage whose open transaction is a `Tx`.
///
/// `append` writes the entry and, when the record has an event, the event and one pending
/// delivery per active webhook subscribed to its type whose tenant the event's
/// [`Audience`] hears (the tenant's ancestry as the transaction sees it), all on `tx`: they
/// commit or roll back with the change written on the same transaction. Returns the number
/// of deliveries.
///
/// A test double for a given `Tx` is a `mockall::mock!` of `AuditSink<Tx>` (see this
/// module's tests).
#[async_trait]
pub trait AuditSink<Tx: Send + ?Sized + 'static>: Send + Sync {
    /// Appends `record` on `tx`.
    async fn append(&self, tx: &mut Tx, record: &AuditRecord) -> Result<u64, StoreError>;
}

/// Appends audit entries through an [`AuditSink`], redaction rules applied.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::{Arc, Mutex};
/// use async_trait::async_trait;
/// use serde_json::json;
/// use stratum_audit::{AuditRecord, AuditSink, AuditTrail, Redaction};
/// use stratum_core::{Caller, StoreError};
///
/// /// A reuser's storage: its "transaction" is a list of pending records.
/// struct MemorySink;
///
/// #[async_trait]
/// impl AuditSink<Vec<AuditRecord>> for MemorySink {
///     async fn append(&self, tx: &mut Vec<AuditRecord>, record: &AuditRecord) -> Result<u64, StoreError> {
///         tx.push(record.clone());
///         Ok(0)
///     }
/// }
///
/// let trail = AuditTrail::new(Arc::new(MemorySink), Redaction::keys(["token"]));
/// let journal = Caller::system()
///     .journal("integration.created", "integration")
///     .resource("crm")
///     .after(Some(json!({"name": "crm", "token": "tok_live_123"})));
/// let mut tx = Vec::new();
/// trail.append(&mut tx, &journal).await.unwrap();
/// assert_eq!(tx[0].after_state, Some(json!({"name": "crm", "token": "[REDACTED]"})));
/// # });
/// ```
pub struct AuditTrail<Tx: Send + ?Sized + 'static> {
    sink: Arc<dyn AuditSink<Tx>>,
    rules: Redaction,
}

impl<Tx: Send + ?Sized + 'static> Clone for AuditTrail<Tx> {
    fn clone(&self) -> Self {
        Self {
            sink: Arc::clone(&self.sink),
            rules: self.rules.clone(),
        }
    }
}

impl<Tx: Send + ?Sized + 'static> AuditTrail<Tx> {
    /// A trail writing through `sink` with `rules`.
    pub fn new(sink: Arc<dyn AuditSink<Tx>>, rules: Redaction) -> Self {
        Self { sink, rules }
    }

    /// The redaction rules.
    pub fn rules(&self) -> &Redaction {
        &self.rules
    }

    /// Appends the record of `journal` on `tx` (the transaction of the change it records);
    /// returns the number of deliveries of its event.
    pub async fn append(&self, tx: &mut Tx, journal: &Journal) -> Result<u64, StoreError> {
        let record = AuditRecord::from_journal(journal, &self.rules);
        self.sink.append(tx, &record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use stratum_core::{Actor, ActorKind, Caller, RequestMeta, Scope};

    mockall::mock! {
        Sink {}
        #[async_trait]
        impl AuditSink<Vec<u8>> for Sink {
            async fn append(&self, tx: &mut Vec<u8>, record: &AuditRecord) -> Result<u64, StoreError>;
        }
    }

    fn caller() -> (Caller, Uuid) {
        let key = Uuid::now_v7();
        (
            Caller {
                actor: Actor {
                    kind: ActorKind::ApiKey(key),
                    scope: Scope::Write,
                    tenant: None,
                },
                meta: RequestMeta {
                    request_id: Some("req-1".into()),
                    ip: Some("198.51.100.4".into()),
                    user_agent: Some("trail-tests".into()),
                },
            },
            key,
        )
    }

    #[test]
    fn redaction_reaches_every_depth_and_only_the_named_fields() {
        let rules = Redaction::keys(["secret", "token"]);
        let mut v = json!({
            "secret": "s",
            "a": [{"token": "t", "x": 1}, "secret"],
            "b": {"secret": null, "nested": {"token": {"deep": true}}},
            "secrets": "not covered",
        });
        rules.apply(&mut v);
        assert_eq!(
            v,
            json!({
                "secret": "[REDACTED]",
                "a": [{"token": "[REDACTED]", "x": 1}, "secret"],
                "b": {"secret": "[REDACTED]", "nested": {"token": "[REDACTED]"}},
                "secrets": "not covered",
            })
        );
        let mut untouched = json!({"secret": "s"});
        Redaction::none().apply(&mut untouched);
        assert_eq!(untouched, json!({"secret": "s"}));
    }

    #[test]
    fn a_record_carries_the_journal_redacted_with_request_facts() {
        let (caller, key) = caller();
        let tenant = Uuid::now_v7();
        let former = Uuid::now_v7();
        let journal = caller
            .journal("webhook.updated", "webhook")
            .resource("w-1")
            .tenant(Some(tenant))
            .before(Some(json!({"url": "https://a", "secret": "old-secret"})))
            .after(Some(json!({"url": "https://b", "secret": "new-secret"})))
            .emit(
                stratum_core::EventType::from_static("webhook.updated"),
                json!({"url": "https://b", "secret": "new-secret"}),
            )
            .also_to(vec![former]);
        let r = AuditRecord::from_journal(&journal, &Redaction::stratum());
        assert_eq!(r.actor_id, key.to_string());
        assert_eq!(r.actor_type, "api_key");
        assert_eq!(r.action, "webhook.updated");
        assert_eq!(r.resource_type, "webhook");
        assert_eq!(r.resource_id.as_deref(), Some("w-1"));
        assert_eq!(r.tenant_id, Some(tenant));
        assert_eq!(
            r.before_state,
            Some(json!({"url": "https://a", "secret": "[REDACTED]"}))
        );
        assert_eq!(
            r.after_state,
            Some(json!({"url": "https://b", "secret": "[REDACTED]"}))
        );
        assert_eq!(
            r.metadata,
            json!({"request_id": "req-1", "ip": "198.51.100.4", "user_agent": "trail-tests"})
        );
        let e = r.event.expect("the journal emits an event");
        assert_eq!(e.event_type, "webhook.updated");
        assert_eq!(e.tenant_id, Some(tenant));
        assert_eq!(
            e.payload,
            json!({"url": "https://b", "secret": "[REDACTED]"})
        );
        assert_eq!(e.extra_audience, vec![former]);
        assert_ne!(e.id, r.id);
        assert!(!serde_json::to_string(&journal.after)
            .unwrap()
            .contains(REDACTED));
    }

    #[test]
    fn a_journal_without_event_records_none() {
        let r = AuditRecord::from_journal(
            &Caller::system().journal("api_key.revoked", "api_key"),
            &Redaction::stratum(),
        );
        assert!(r.event.is_none());
        assert_eq!(r.actor_id, "system");
        assert_eq!(r.before_state, None);
        assert_eq!(
            r.metadata,
            json!({"request_id": null, "ip": null, "user_agent": null})
        );
    }

    #[tokio::test]
    async fn the_trail_hands_the_redacted_record_to_the_sink_on_the_given_transaction() {
        let seen: Arc<Mutex<Option<AuditRecord>>> = Arc::default();
        let parked = Arc::clone(&seen);
        let mut sink = MockSink::new();
        sink.expect_append()
            .withf(|tx, _| tx.as_slice() == b"tx-7")
            .times(1)
            .returning(move |_, r| {
                *parked.lock().unwrap() = Some(r.clone());
                Ok(3)
            });
        let trail = AuditTrail::new(Arc::new(sink), Redaction::keys(["password"]));
        let journal = Caller::system()
            .journal("user.created", "user")
            .after(Some(json!({"login": "ada", "password": "pw"})))
            .emit(
                stratum_core::EventType::from_static("user.created"),
                json!({"login": "ada", "password": "pw"}),
            );
        let mut tx = b"tx-7".to_vec();
        assert_eq!(trail.append(&mut tx, &journal).await.unwrap(), 3);
        let r = seen.lock().unwrap().take().unwrap();
        assert_eq!(
            r.after_state,
            Some(json!({"login": "ada", "password": "[REDACTED]"}))
        );
        assert_eq!(
            r.event.unwrap().payload,
            json!({"login": "ada", "password": "[REDACTED]"})
        );
    }

    #[tokio::test]
    async fn a_failing_sink_fails_the_append() {
        let mut sink = MockSink::new();
        sink.expect_append()
            .returning(|_, _| Err(StoreError::Unavailable));
        let trail = AuditTrail::new(Arc::new(sink), Redaction::stratum());
        let err = trail
            .append(&mut Vec::new(), &Caller::system().journal("x.y", "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable));
    }

    #[test]
    fn the_audience_is_the_ancestry_plus_the_extra_tenants() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let (root, parent, leaf, child, sibling, former) =
            (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
        let path = TenantPath::root(root).child(parent).child(leaf);
        let a = Audience::of(Some(&path), &[former]);
        for t in [root, parent, leaf, former] {
            assert!(a.hears(Some(t)), "{t} is in the audience");
        }
        for t in [child, sibling] {
            assert!(!a.hears(Some(t)), "{t} is not in the audience");
        }
        assert!(a.hears(None));
        let mut listed: Vec<Uuid> = a.tenants().collect();
        listed.sort();
        let mut expected = vec![root, parent, leaf, former];
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_global_event_is_heard_by_global_webhooks_and_the_extra_tenants_only() {
        let extra = Uuid::now_v7();
        let a = Audience::of(None, &[extra]);
        assert!(a.hears(None));
        assert!(a.hears(Some(extra)));
        assert!(!a.hears(Some(Uuid::now_v7())));
        assert!(!Audience::of(None, &[]).hears(Some(extra)));
    }
}
