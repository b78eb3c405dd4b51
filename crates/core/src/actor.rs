//! Who is acting, with which scope, over which part of the tenant tree.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TenantPath;

/// What a key may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET routes.
    Read,
    /// Mutations.
    Write,
    /// API keys and maintenance.
    Admin,
}

impl Scope {
    /// Parses `read`, `write` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// The tenant a scoped key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    /// The tenant's id.
    pub id: Uuid,
    /// Its path: the key sees every tenant under it.
    pub path: TenantPath,
}

/// What kind of principal acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorKind {
    /// A stored API key.
    ApiKey(Uuid),
    /// The bootstrap key from `STRATUM_ADMIN_API_KEY`.
    Bootstrap,
    /// Stratum itself (the worker, the command line).
    System,
}

/// The principal behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Who.
    pub kind: ActorKind,
    /// The highest scope held.
    pub scope: Scope,
    /// `None` for a global key.
    pub tenant: Option<TenantScope>,
}

impl Actor {
    /// Stratum acting on its own behalf, with every right.
    pub fn system() -> Self {
        Self {
            kind: ActorKind::System,
            scope: Scope::Admin,
            tenant: None,
        }
    }

    /// The `actor_id` recorded in the audit log.
    pub fn id(&self) -> String {
        match &self.kind {
            ActorKind::ApiKey(id) => id.to_string(),
            ActorKind::Bootstrap => "bootstrap".to_owned(),
            ActorKind::System => "system".to_owned(),
        }
    }

    /// The `actor_type` recorded in the audit log.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ActorKind::ApiKey(_) | ActorKind::Bootstrap => "api_key",
            ActorKind::System => "system",
        }
    }

    /// True for a key not bound to a tenant.
    pub fn is_global(&self) -> bool {
        self.tenant.is_none()
    }

    /// True when the actor holds at least `needed`.
    pub fn has_scope(&self, needed: Scope) -> bool {
        self.scope >= needed
    }

    /// True when a tenant at `path` is visible to this actor.
    pub fn can_see(&self, path: &TenantPath) -> bool {
        self.tenant.as_ref().is_none_or(|t| t.path.contains(path))
    }

    /// True when something owned by the tenant at `owner` (`None`: global, owned by no
    /// tenant) is visible: global actors see everything, scoped ones their subtree only.
    pub fn can_see_owned_by(&self, owner: Option<&TenantPath>) -> bool {
        match (self.subtree(), owner) {
            (None, _) => true,
            (Some(scope), Some(p)) => scope.contains(p),
            (Some(_), None) => false,
        }
    }

    /// The path prefix the actor is confined to, if any.
    pub fn subtree(&self) -> Option<&TenantPath> {
        self.tenant.as_ref().map(|t| &t.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered() {
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        for s in [Scope::Read, Scope::Write, Scope::Admin] {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn scoped_actor_sees_only_its_subtree() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let pa = TenantPath::root(a);
        let actor = Actor {
            kind: ActorKind::ApiKey(Uuid::now_v7()),
            scope: Scope::Write,
            tenant: Some(TenantScope {
                id: a,
                path: pa.clone(),
            }),
        };
        assert!(actor.can_see(&pa.child(b)));
        assert!(!actor.can_see(&TenantPath::root(c)));
        assert!(actor.has_scope(Scope::Read) && !actor.has_scope(Scope::Admin));
        assert!(Actor::system().can_see(&TenantPath::root(c)));
        assert!(actor.can_see_owned_by(Some(&pa.child(b))));
        assert!(!actor.can_see_owned_by(Some(&TenantPath::root(c))));
        assert!(
            !actor.can_see_owned_by(None),
            "global resources are for global keys"
        );
        assert!(Actor::system().can_see_owned_by(None));
    }
}
