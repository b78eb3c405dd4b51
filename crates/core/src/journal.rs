//! The record every mutation commits together with its change: audit entry + event.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use thiserror::Error;

use crate::{Actor, EventType, Scope};

/// Request facts kept in the audit entry's `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestMeta {
    /// The `X-Request-Id` of the request.
    pub request_id: Option<String>,
    /// The client address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// An event to put in the outbox and fan out to subscribed webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    /// The event's name, e.g. `tenant.created`.
    pub event_type: EventType,
    /// The tenant the event is about (`None`: global).
    pub tenant_id: Option<Uuid>,
    /// The resource after the change, secrets redacted.
    pub payload: Value,
    /// Tenants whose webhooks also receive it besides the tenant's own ancestry
    /// (a moved tenant's former ancestors).
    pub extra_audience: Vec<Uuid>,
}

/// What a mutation records: built by a domain service, written by the adapter in the
/// mutation's own transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Journal {
    /// `actor_id` of the audit entry.
    pub actor_id: String,
    /// `actor_type` of the audit entry.
    pub actor_type: String,
    /// e.g. `tenant.created`.
    pub action: String,
    /// e.g. `tenant`.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// The tenant the change belongs to.
    pub tenant_id: Option<Uuid>,
    /// State before, redacted.
    pub before: Option<Value>,
    /// State after, redacted.
    pub after: Option<Value>,
    /// Request facts.
    pub meta: RequestMeta,
    /// The event, when the change is one webhooks hear about.
    pub event: Option<EventDraft>,
}

impl Journal {
    /// A journal entry for `action` on `resource_type` by `actor`.
    pub fn new(actor: &Actor, meta: &RequestMeta, action: &str, resource_type: &str) -> Self {
        Self {
            actor_id: actor.id(),
            actor_type: actor.kind_name().to_owned(),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: None,
            tenant_id: None,
            before: None,
            after: None,
            meta: meta.clone(),
            event: None,
        }
    }

    /// Sets the resource id.
    pub fn resource(mut self, id: impl ToString) -> Self {
        self.resource_id = Some(id.to_string());
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant_id: Option<Uuid>) -> Self {
        self.tenant_id = tenant_id;
        self
    }

    /// Sets the before state.
    pub fn before(mut self, state: Option<Value>) -> Self {
        self.before = state;
        self
    }

    /// Sets the after state.
    pub fn after(mut self, state: Option<Value>) -> Self {
        self.after = state;
        self
    }

    /// Emits `event` for the journal's tenant, with `payload`.
    pub fn emit(mut self, event: EventType, payload: Value) -> Self {
        self.event = Some(EventDraft {
            event_type: event,
            tenant_id: self.tenant_id,
            payload,
            extra_audience: Vec::new(),
        });
        self
    }

    /// Also delivers the event to webhooks of these tenants.
    pub fn also_to(mut self, tenants: Vec<Uuid>) -> Self {
        if let Some(e) = self.event.as_mut() {
            e.extra_audience = tenants;
        }
        self
    }
}

/// Who calls, and from where: what every use case needs to check access and to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal.
    pub actor: Actor,
    /// Request facts for the audit entry.
    pub meta: RequestMeta,
}

/// The caller may not do this: it lacks the scope, or the operation is for global keys
/// only. The message says which.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Forbidden(pub String);

impl Caller {
    /// The highest scope the caller holds (`read` < `write` < `admin`).
    pub fn scope(&self) -> Scope {
        self.actor.scope
    }

    /// `Forbidden` unless the caller holds at least `needed`: the first thing every use
    /// case checks.
    ///
    /// ```
    /// use stratum_core::{Actor, ActorKind, Caller, RequestMeta, Scope};
    /// use uuid::Uuid;
    ///
    /// let reader = Caller {
    ///     actor: Actor { kind: ActorKind::ApiKey(Uuid::now_v7()), scope: Scope::Read, tenant: None },
    ///     meta: RequestMeta::default(),
    /// };
    /// assert!(reader.require(Scope::Read).is_ok());
    /// let refused = reader.require(Scope::Write).unwrap_err();
    /// assert_eq!(refused.to_string(), "this key lacks the 'write' scope");
    /// assert!(Caller::system().require_global_admin().is_ok());
    /// ```
    pub fn require(&self, needed: Scope) -> Result<(), Forbidden> {
        if self.actor.has_scope(needed) {
            Ok(())
        } else {
            Err(Forbidden(format!(
                "this key lacks the '{}' scope",
                needed.as_str()
            )))
        }
    }

    /// `Forbidden` unless the caller holds `admin` on a key bound to no tenant: what
    /// managing API keys, maintenance and verifying the audit chain need. The one place
    /// this rule is decided.
    pub fn require_global_admin(&self) -> Result<(), Forbidden> {
        if !self.actor.has_scope(Scope::Admin) {
            return Err(Forbidden("this route needs the 'admin' scope".into()));
        }
        if !self.actor.is_global() {
            return Err(Forbidden(
                "this route needs a key that is not tenant-scoped".into(),
            ));
        }
        Ok(())
    }

    /// Stratum itself, outside any request.
    pub fn system() -> Self {
        Self {
            actor: Actor::system(),
            meta: RequestMeta::default(),
        }
    }

    /// Starts a journal entry for `action` on `resource_type`.
    pub fn journal(&self, action: &str, resource_type: &str) -> Journal {
        Journal::new(&self.actor, &self.meta, action, resource_type)
    }

    /// Starts a journal entry whose action is the name of `event`, on `resource_type`;
    /// [`Journal::emit`] then emits that event.
    ///
    /// ```
    /// use serde_json::json;
    /// use stratum_core::{Caller, EventType};
    ///
    /// const SHIPPED: EventType = EventType::from_static("order.shipped");
    /// let journal = Caller::system()
    ///     .journal_of(&SHIPPED, "order")
    ///     .resource("o-1")
    ///     .emit(SHIPPED, json!({"id": "o-1"}));
    /// assert_eq!(journal.action, "order.shipped");
    /// assert_eq!(journal.event.unwrap().event_type, SHIPPED);
    /// ```
    pub fn journal_of(&self, event: &EventType, resource_type: &str) -> Journal {
        Journal::new(&self.actor, &self.meta, event.as_str(), resource_type)
    }
}
