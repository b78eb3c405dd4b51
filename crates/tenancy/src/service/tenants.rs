//! Tenants: the tree and its events.

use std::sync::Arc;

use serde_json::{json, Value};
use stratum_core::{new_id, Caller, Clock, Limit, Precondition, Scope, TenantPath};
use uuid::Uuid;

use super::{after_stale, check_precondition, to_json, Result};
use crate::events::{TENANT_CREATED, TENANT_DELETED, TENANT_MOVED, TENANT_UPDATED};
use crate::model::*;
use crate::ports::*;
use crate::TenancyError;

/// `tenant.moved` carries the tenant after the move, with `previous_parent_id` inside it.
fn moved_payload(tenant: &Value, previous_parent_id: Option<Uuid>) -> Value {
    let mut data = tenant.clone();
    if let Value::Object(map) = &mut data {
        map.insert("previous_parent_id".into(), json!(previous_parent_id));
    }
    data
}

/// What `POST /tenants` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTenant {
    /// Display name.
    pub name: String,
    /// Unique handle.
    pub slug: String,
    /// Parent, `None` for a root.
    pub parent_id: Option<Uuid>,
    /// Free-form object.
    pub metadata: Option<Value>,
}

/// What `PATCH /tenants/:id` carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPatch {
    /// New name.
    pub name: Option<String>,
    /// New slug.
    pub slug: Option<String>,
    /// New metadata (replaces the old object).
    pub metadata: Option<Value>,
}

/// Tenants: the tree and its events.
pub struct TenantService {
    store: Arc<dyn TenantStore>,
    clock: Arc<dyn Clock>,
}

impl TenantService {
    /// Wires the service.
    pub fn new(store: Arc<dyn TenantStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// A tenant the caller can see, archived or not.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<Tenant> {
        caller.require(Scope::Read)?;
        match self.store.get(id).await? {
            Some(t) if caller.actor.can_see(&t.ancestry_path) => Ok(t),
            _ => Err(TenancyError::TenantNotFound),
        }
    }

    /// An active tenant the caller can see: what every tenant-bound route needs.
    pub async fn visible_active(&self, caller: &Caller, id: Uuid) -> Result<Tenant> {
        caller.require(Scope::Read)?;
        let t = self.get(caller, id).await?;
        if t.status != TenantStatus::Active {
            return Err(TenancyError::TenantNotFound);
        }
        Ok(t)
    }

    /// A page of active tenants visible to the caller, and the cursor of the next page.
    pub async fn list(
        &self,
        caller: &Caller,
        cursor: Option<Uuid>,
        limit: Limit,
    ) -> Result<(Vec<Tenant>, Option<Uuid>)> {
        caller.require(Scope::Read)?;
        let mut rows = self
            .store
            .list(caller.actor.subtree().cloned(), cursor, limit)
            .await?;
        let next = stratum_core::next_page(&mut rows, limit, |t| t.id);
        Ok((rows, next))
    }

    /// Creates a tenant (root, or under a visible parent). The store writes the tenant and
    /// the journal (audit entry and `tenant.created` event) in one transaction.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use stratum_core::{Caller, SystemClock};
    /// use stratum_tenancy::{MockTenantStore, NewTenant, TenantService};
    ///
    /// let mut store = MockTenantStore::new();
    /// store
    ///     .expect_create()
    ///     .withf(|tenant, journal| {
    ///         journal.action == "tenant.created"
    ///             && journal.tenant_id == Some(tenant.id)
    ///             && journal.event.is_some()
    ///     })
    ///     .times(1)
    ///     .returning(|_, _| Ok(()));
    /// let tenants = TenantService::new(Arc::new(store), Arc::new(SystemClock));
    /// let acme = tenants
    ///     .create(
    ///         &Caller::system(),
    ///         NewTenant {
    ///             name: "Acme".into(),
    ///             slug: "acme".into(),
    ///             parent_id: None,
    ///             metadata: None,
    ///         },
    ///     )
    ///     .await
    ///     .unwrap();
    /// assert_eq!(acme.ancestry_path.ids(), vec![acme.id]);
    /// assert_eq!(acme.version, 1);
    /// # });
    /// ```
    pub async fn create(&self, caller: &Caller, input: NewTenant) -> Result<Tenant> {
        caller.require(Scope::Write)?;
        let name = validate_name(&input.name)?;
        let slug = validate_slug(&input.slug)?;
        let metadata = validate_metadata("metadata", input.metadata)?;
        let id = new_id();
        let (parent_id, path) = match input.parent_id {
            Some(pid) => {
                let parent = self.visible_active(caller, pid).await?;
                validate_depth("parent_id", parent.ancestry_path.depth() + 1)?;
                (Some(pid), parent.ancestry_path.child(id))
            }
            None if caller.actor.is_global() => (None, TenantPath::root(id)),
            None => {
                return Err(TenancyError::Forbidden(
                    "a tenant-scoped key can only create tenants inside its own subtree (set parent_id)".into(),
                ))
            }
        };
        let now = self.clock.now();
        let tenant = Tenant {
            id,
            parent_id,
            name,
            slug,
            depth: path.depth() as i32,
            ancestry_path: path,
            metadata,
            status: TenantStatus::Active,
            deleted_at: None,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let state = to_json(&tenant);
        let journal = caller
            .journal_of(&TENANT_CREATED, "tenant")
            .resource(id)
            .tenant(Some(id))
            .after(Some(state.clone()))
            .emit(TENANT_CREATED, state);
        self.store.create(tenant.clone(), journal).await?;
        Ok(tenant)
    }

    /// Changes name, slug or metadata of the tenant as it is when the change commits.
    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: TenantPatch,
        precondition: Precondition,
    ) -> Result<Tenant> {
        caller.require(Scope::Write)?;
        let name = patch.name.as_deref().map(validate_name).transpose()?;
        let slug = patch.slug.as_deref().map(validate_slug).transpose()?;
        let metadata = match patch.metadata {
            Some(m) => Some(validate_metadata("metadata", Some(m))?),
            None => None,
        };
        let caller = caller.clone();
        let clock = Arc::clone(&self.clock);
        // Computed under the row lock from the committed state: a hot tenant's writers
        // queue on the lock once instead of retrying, and the journal's before-state is
        // exactly what the change replaces.
        let change: TenantChange = Box::new(move |before: &Tenant| {
            if !caller.actor.can_see(&before.ancestry_path) {
                return Err(TenancyError::TenantNotFound);
            }
            check_precondition(precondition, before.version)?;
            let mut after = before.clone();
            if let Some(n) = name {
                after.name = n;
            }
            if let Some(s) = slug {
                after.slug = s;
            }
            if let Some(m) = metadata {
                after.metadata = m;
            }
            if after == *before {
                return Ok(None);
            }
            // Read under the lock, so a change never looks older than the one it replaces,
            // and at least a millisecond later (the precision the API shows).
            let floor = before.updated_at + time::Duration::milliseconds(1);
            after.updated_at = clock.now().max(floor);
            let state = to_json(&after);
            let journal = caller
                .journal_of(&TENANT_UPDATED, "tenant")
                .resource(id)
                .tenant(Some(id))
                .before(Some(to_json(before)))
                .after(Some(state.clone()))
                .emit(TENANT_UPDATED, state);
            Ok(Some((after, journal)))
        });
        self.store.modify(id, change).await
    }

    /// Archives a tenant without active children.
    pub async fn archive(
        &self,
        caller: &Caller,
        id: Uuid,
        precondition: Precondition,
    ) -> Result<()> {
        caller.require(Scope::Write)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.visible_active(caller, id).await?;
            check_precondition(precondition, before.version)?;
            let now = self.clock.now();
            let mut after = before.clone();
            after.status = TenantStatus::Archived;
            after.deleted_at = Some(now);
            after.updated_at = now;
            let state = to_json(&after);
            let journal = caller
                .journal_of(&TENANT_DELETED, "tenant")
                .resource(id)
                .tenant(Some(id))
                .before(Some(to_json(&before)))
                .after(Some(state.clone()))
                .emit(TENANT_DELETED, state);
            match self.store.archive(id, before.version, now, journal).await {
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                other => return other,
            }
        }
    }

    /// Moves a tenant (and its subtree) under another parent.
    pub async fn move_to(
        &self,
        caller: &Caller,
        id: Uuid,
        new_parent_id: Uuid,
        precondition: Precondition,
    ) -> Result<Tenant> {
        caller.require(Scope::Write)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.visible_active(caller, id).await?;
            check_precondition(precondition, before.version)?;
            let parent = self.visible_active(caller, new_parent_id).await?;
            if before.ancestry_path.contains(&parent.ancestry_path) {
                return Err(TenancyError::CycleDetected);
            }
            if before.parent_id == Some(new_parent_id) {
                return Ok(before);
            }
            let to = parent.ancestry_path.child(id);
            self.check_moved_depth(&before, to.depth()).await?;
            let now = self.clock.now();
            let mut after = before.clone();
            after.parent_id = Some(new_parent_id);
            after.depth = to.depth() as i32;
            after.ancestry_path = to.clone();
            after.updated_at = now;
            let state = to_json(&after);
            let old_ancestors: Vec<Uuid> = before.ancestry_path.ids();
            let journal = caller
                .journal_of(&TENANT_MOVED, "tenant")
                .resource(id)
                .tenant(Some(id))
                .before(Some(to_json(&before)))
                .after(Some(state.clone()))
                .emit(TENANT_MOVED, moved_payload(&state, before.parent_id))
                .also_to(old_ancestors);
            let moved = self
                .store
                .move_subtree(
                    id,
                    before.version,
                    new_parent_id,
                    before.ancestry_path.clone(),
                    to,
                    now,
                    journal,
                )
                .await;
            match moved {
                Ok(version) => {
                    after.version = version;
                    return Ok(after);
                }
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// The subtree's deepest tenant must stay within [`MAX_DEPTH`] after the move.
    async fn check_moved_depth(&self, tenant: &Tenant, new_depth: usize) -> Result<()> {
        let old_depth = tenant.ancestry_path.depth();
        let below = self
            .store
            .descendants(tenant.ancestry_path.clone())
            .await?
            .iter()
            .map(|d| d.ancestry_path.depth().saturating_sub(old_depth))
            .max()
            .unwrap_or(0);
        validate_depth("new_parent_id", new_depth + below)
    }

    /// Active children of a visible tenant.
    pub async fn children(&self, caller: &Caller, id: Uuid) -> Result<Vec<Tenant>> {
        caller.require(Scope::Read)?;
        let t = self.get(caller, id).await?;
        Ok(self.store.children(t.id).await?)
    }

    /// Ancestors of a visible tenant, root first, limited to what the caller can see.
    pub async fn ancestors(&self, caller: &Caller, id: Uuid) -> Result<Vec<Tenant>> {
        caller.require(Scope::Read)?;
        let t = self.get(caller, id).await?;
        let ids: Vec<Uuid> = t
            .ancestry_path
            .ids()
            .into_iter()
            .filter(|a| *a != id)
            .collect();
        let mut found = self.store.get_many(ids.clone()).await?;
        found.retain(|a| caller.actor.can_see(&a.ancestry_path));
        found.sort_by_key(|a| ids.iter().position(|x| *x == a.id));
        Ok(found)
    }

    /// Every active descendant of a visible tenant, shallowest first.
    pub async fn descendants(&self, caller: &Caller, id: Uuid) -> Result<Vec<Tenant>> {
        caller.require(Scope::Read)?;
        let t = self.get(caller, id).await?;
        Ok(self.store.descendants(t.ancestry_path).await?)
    }
}
