//! The tenancy use cases.

use crate::events::{
    CONFIG_DELETED, CONFIG_UPDATED, PERMISSION_CREATED, PERMISSION_DELETED, PERMISSION_UPDATED,
    TENANT_CREATED, TENANT_DELETED, TENANT_MOVED, TENANT_UPDATED,
};
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use stratum_core::{
    new_id, Actor, ActorKind, Caller, Clock, Limit, Precondition, Scope, StoreError, TenantPath,
    TenantScope, KEY_RETRIES,
};
use stratum_crypto::{constant_time_eq, generate_api_key, sha256_hex, CryptoError, SharedKeyring};
use uuid::Uuid;

use crate::model::*;
use crate::ports::*;
use crate::TenancyError;

type Result<T> = std::result::Result<T, TenancyError>;

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn check_precondition(precondition: Precondition, current: i64) -> Result<()> {
    Ok(stratum_core::check_precondition(precondition, current)?)
}

fn after_stale(precondition: Precondition, attempt: u32) -> Result<()> {
    Ok(stratum_core::after_stale(precondition, attempt)?)
}

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
        match self.store.get(id).await? {
            Some(t) if caller.actor.can_see(&t.ancestry_path) => Ok(t),
            _ => Err(TenancyError::TenantNotFound),
        }
    }

    /// An active tenant the caller can see: what every tenant-bound route needs.
    pub async fn visible_active(&self, caller: &Caller, id: Uuid) -> Result<Tenant> {
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
        let mut rows = self
            .store
            .list(caller.actor.subtree().cloned(), cursor, limit.as_i64() + 1)
            .await?;
        let next = stratum_core::next_page(&mut rows, limit, |t| t.id);
        Ok((rows, next))
    }

    /// Creates a tenant (root, or under a visible parent).
    pub async fn create(&self, caller: &Caller, input: NewTenant) -> Result<Tenant> {
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
        let t = self.get(caller, id).await?;
        Ok(self.store.children(t.id).await?)
    }

    /// Ancestors of a visible tenant, root first, limited to what the caller can see.
    pub async fn ancestors(&self, caller: &Caller, id: Uuid) -> Result<Vec<Tenant>> {
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
        let t = self.get(caller, id).await?;
        Ok(self.store.descendants(t.ancestry_path).await?)
    }
}

/// Config with inheritance root → leaf, locks and encrypted sensitive values.
pub struct ConfigService {
    tenants: Arc<TenantService>,
    store: Arc<dyn ConfigStore>,
    keyring: SharedKeyring,
    clock: Arc<dyn Clock>,
}

impl ConfigService {
    /// Wires the service.
    pub fn new(
        tenants: Arc<TenantService>,
        store: Arc<dyn ConfigStore>,
        keyring: SharedKeyring,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tenants,
            store,
            keyring,
            clock,
        }
    }

    fn reveal(&self, stored: &StoredConfigEntry) -> Result<(Value, bool)> {
        match &stored.value {
            StoredValue::Plain(v) => Ok((v.clone(), false)),
            StoredValue::Encrypted(c) => {
                let text = self.keyring.get().decrypt_str(c).map_err(|e| match e {
                    // Another process rotated to a key this one does not hold: 503, not 500.
                    CryptoError::KeyMismatch { found, .. } => {
                        TenancyError::Store(StoreError::KeyUnavailable { key_id: found })
                    }
                    other => TenancyError::Crypto(other.to_string()),
                })?;
                let v =
                    serde_json::from_str(&text).map_err(|e| TenancyError::Crypto(e.to_string()))?;
                Ok((v, true))
            }
        }
    }

    async fn resolve(&self, tenant: &Tenant) -> Result<BTreeMap<String, ConfigEntry>> {
        let stored = self.store.entries_for(tenant.ancestry_path.ids()).await?;
        self.resolve_from(tenant, stored)
    }

    /// The effective config of `tenant` from the entries stored along its ancestry.
    fn resolve_from(
        &self,
        tenant: &Tenant,
        mut stored: Vec<StoredConfigEntry>,
    ) -> Result<BTreeMap<String, ConfigEntry>> {
        let chain = tenant.ancestry_path.ids();
        stored.sort_by_key(|e| chain.iter().position(|id| *id == e.tenant_id));
        let mut out: BTreeMap<String, ConfigEntry> = BTreeMap::new();
        for e in stored {
            if out.get(&e.key).is_some_and(|prev| prev.locked) {
                continue;
            }
            let (value, sensitive) = self.reveal(&e)?;
            out.insert(
                e.key.clone(),
                ConfigEntry {
                    key: e.key,
                    value,
                    source_tenant_id: e.tenant_id,
                    inherited: e.tenant_id != tenant.id,
                    locked: e.locked,
                    sensitive,
                },
            );
        }
        Ok(out)
    }

    /// The tenant's effective config.
    pub async fn resolved(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
    ) -> Result<BTreeMap<String, ConfigEntry>> {
        let tenant = self.tenants.visible_active(caller, tenant_id).await?;
        self.resolve(&tenant).await
    }

    /// The entry stored at the tenant itself (not inherited) and its version;
    /// `ConfigNotFound` when the tenant has none for `key`.
    pub async fn get_entry(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
    ) -> Result<(ConfigEntry, i64)> {
        let key = validate_config_key(key).map_err(|_| TenancyError::ConfigNotFound)?;
        self.tenants.visible_active(caller, tenant_id).await?;
        let stored = self.store.entries_for(vec![tenant_id]).await?;
        let own = stored
            .into_iter()
            .find(|e| e.key == key && e.tenant_id == tenant_id)
            .ok_or(TenancyError::ConfigNotFound)?;
        let (value, sensitive) = self.reveal(&own)?;
        Ok((
            ConfigEntry {
                key,
                value,
                source_tenant_id: tenant_id,
                inherited: false,
                locked: own.locked,
                sensitive,
            },
            own.version,
        ))
    }

    /// Sets a key on the tenant itself, over the entry as it is when the change commits;
    /// returns the entry and its new version.
    #[allow(
        clippy::too_many_arguments,
        reason = "the route's body fields plus If-Match"
    )]
    pub async fn put(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
        value: Value,
        locked: Option<bool>,
        sensitive: Option<bool>,
        precondition: Precondition,
    ) -> Result<(ConfigEntry, i64)> {
        let key = validate_config_key(key)?;
        validate_json("value", &value)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .put_once(
                    caller,
                    tenant_id,
                    &key,
                    &value,
                    locked,
                    sensitive,
                    precondition,
                )
                .await
            {
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                other => return other,
            }
        }
    }

    #[allow(clippy::too_many_arguments, reason = "put's arguments, validated")]
    async fn put_once(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
        value: &Value,
        locked: Option<bool>,
        sensitive: Option<bool>,
        precondition: Precondition,
    ) -> Result<(ConfigEntry, i64)> {
        let key = key.to_owned();
        let value = value.clone();
        let tenant = self.tenants.visible_active(caller, tenant_id).await?;
        let stored_chain = self.store.entries_for(tenant.ancestry_path.ids()).await?;
        let stored_version = stored_chain
            .iter()
            .find(|e| e.tenant_id == tenant_id && e.key == key)
            .map(|e| e.version);
        match (precondition, stored_version) {
            (Precondition::Any, _) => {}
            (p, Some(v)) => check_precondition(p, v)?,
            (_, None) => {
                return Err(TenancyError::PreconditionFailed(
                    "the tenant has no entry for this key".into(),
                ))
            }
        }
        let resolved = self.resolve_from(&tenant, stored_chain)?;
        let current = resolved.get(&key);
        if let Some(c) = current.filter(|c| c.inherited && c.locked) {
            return Err(TenancyError::ConfigLocked(c.key.clone()));
        }
        let own = current.filter(|c| !c.inherited);
        let locked = locked.or(own.map(|c| c.locked)).unwrap_or(false);
        // A key an ancestor marked sensitive stays sensitive below unless the caller says
        // otherwise: an override must not put the secret in clear in audit and events.
        let sensitive = sensitive.or(current.map(|c| c.sensitive)).unwrap_or(false);
        let secret_text = if sensitive {
            Some(
                serde_json::to_string(&value)
                    .map_err(|e| TenancyError::invalid("value", e.to_string()))?,
            )
        } else {
            None
        };
        let seal = |text: &str| {
            self.keyring
                .get()
                .encrypt_str(text)
                .map(StoredValue::Encrypted)
                .map_err(|e| TenancyError::Crypto(e.to_string()))
        };
        let stored_value = match &secret_text {
            Some(text) => seal(text)?,
            None => StoredValue::Plain(value.clone()),
        };
        let now = self.clock.now();
        let entry = ConfigEntry {
            key: key.clone(),
            value,
            source_tenant_id: tenant_id,
            inherited: false,
            locked,
            sensitive,
        };
        let after = entry.redacted();
        let journal = caller
            .journal_of(&CONFIG_UPDATED, "config")
            .resource(format!("{tenant_id}/{key}"))
            .tenant(Some(tenant_id))
            .before(own.map(ConfigEntry::redacted))
            .after(Some(after.clone()))
            .emit(CONFIG_UPDATED, after);
        let ancestors: Vec<Uuid> = tenant
            .ancestry_path
            .ids()
            .into_iter()
            .filter(|a| *a != tenant_id)
            .collect();
        let mut stored = StoredConfigEntry {
            tenant_id,
            key,
            value: stored_value,
            locked,
            created_at: now,
            updated_at: now,
            version: stored_version.map_or(1, |v| v + 1),
        };
        let mut tries = 0;
        loop {
            match self
                .store
                .put(
                    stored.clone(),
                    stored_version,
                    ancestors.clone(),
                    journal.clone(),
                )
                .await
            {
                Ok(written) => return Ok((entry, written.version)),
                // A rotation committed after we sealed the value: seal it again under the
                // active key when this process holds it.
                Err(TenancyError::Store(StoreError::KeyNotActive { active_key_id }))
                    if tries < KEY_RETRIES =>
                {
                    tries += 1;
                    if !self.keyring.adopt(&active_key_id) {
                        return Err(TenancyError::Store(StoreError::KeyUnavailable {
                            key_id: active_key_id,
                        }));
                    }
                    if let Some(text) = &secret_text {
                        stored.value = seal(text)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes a key from the tenant itself.
    pub async fn delete(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
        precondition: Precondition,
    ) -> Result<()> {
        let key = validate_config_key(key).map_err(|_| TenancyError::ConfigNotFound)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .delete_once(caller, tenant_id, &key, precondition)
                .await
            {
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                other => return other,
            }
        }
    }

    async fn delete_once(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
        precondition: Precondition,
    ) -> Result<()> {
        let key = key.to_owned();
        self.tenants.visible_active(caller, tenant_id).await?;
        // The tenant's own entry, even where an ancestor's lock hides it from the resolved view.
        let stored = self.store.entries_for(vec![tenant_id]).await?;
        let own = stored
            .iter()
            .find(|e| e.key == key && e.tenant_id == tenant_id)
            .ok_or(TenancyError::ConfigNotFound)?;
        check_precondition(precondition, own.version)?;
        let expected = own.version;
        let (value, sensitive) = self.reveal(own)?;
        let before = ConfigEntry {
            key: key.clone(),
            value,
            source_tenant_id: tenant_id,
            inherited: false,
            locked: own.locked,
            sensitive,
        }
        .redacted();
        let journal = caller
            .journal_of(&CONFIG_DELETED, "config")
            .resource(format!("{tenant_id}/{key}"))
            .tenant(Some(tenant_id))
            .before(Some(before.clone()))
            .emit(
                CONFIG_DELETED,
                json!({"tenant_id": tenant_id, "key": key, "previous": before}),
            );
        self.store.delete(tenant_id, key, expected, journal).await
    }
}

/// What `POST /tenants/:id/permissions` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPermission {
    /// Permission name.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// `LOCKED`, `INHERITED` or `DELEGATED`.
    pub mode: String,
}

/// Permission policies.
pub struct PermissionService {
    tenants: Arc<TenantService>,
    store: Arc<dyn PermissionStore>,
    clock: Arc<dyn Clock>,
}

impl PermissionService {
    /// Wires the service.
    pub fn new(
        tenants: Arc<TenantService>,
        store: Arc<dyn PermissionStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tenants,
            store,
            clock,
        }
    }

    /// The tenant's policies.
    pub async fn list(&self, caller: &Caller, tenant_id: Uuid) -> Result<Vec<PermissionPolicy>> {
        self.tenants.visible_active(caller, tenant_id).await?;
        Ok(self.store.list(tenant_id).await?)
    }

    /// One policy of a visible tenant; `PermissionNotFound` when it belongs to another.
    pub async fn get(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<PermissionPolicy> {
        self.owned(caller, tenant_id, id).await
    }

    async fn owned(&self, caller: &Caller, tenant_id: Uuid, id: Uuid) -> Result<PermissionPolicy> {
        self.tenants.visible_active(caller, tenant_id).await?;
        match self.store.get(id).await? {
            Some(p) if p.tenant_id == tenant_id => Ok(p),
            _ => Err(TenancyError::PermissionNotFound),
        }
    }

    /// Creates a policy.
    pub async fn create(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        input: NewPermission,
    ) -> Result<PermissionPolicy> {
        let key = validate_permission_key(&input.key)?;
        validate_json("value", &input.value)?;
        let mode = PermissionMode::parse(&input.mode)?;
        self.tenants.visible_active(caller, tenant_id).await?;
        let now = self.clock.now();
        let policy = PermissionPolicy {
            id: new_id(),
            tenant_id,
            key,
            value: input.value,
            mode,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let state = to_json(&policy);
        let journal = caller
            .journal_of(&PERMISSION_CREATED, "permission")
            .resource(policy.id)
            .tenant(Some(tenant_id))
            .after(Some(state.clone()))
            .emit(PERMISSION_CREATED, state);
        self.store.create(policy.clone(), journal).await?;
        Ok(policy)
    }

    /// Changes value and/or mode of the policy as it is when the change commits.
    pub async fn update(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        id: Uuid,
        value: Option<Value>,
        mode: Option<String>,
        precondition: Precondition,
    ) -> Result<PermissionPolicy> {
        let mode = mode.map(|m| PermissionMode::parse(&m)).transpose()?;
        if let Some(v) = &value {
            validate_json("value", v)?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.owned(caller, tenant_id, id).await?;
            check_precondition(precondition, before.version)?;
            let mut after = before.clone();
            if let Some(v) = &value {
                after.value.clone_from(v);
            }
            if let Some(m) = mode {
                after.mode = m;
            }
            if after == before {
                return Ok(before);
            }
            after.updated_at = self.clock.now();
            let state = to_json(&after);
            let journal = caller
                .journal_of(&PERMISSION_UPDATED, "permission")
                .resource(id)
                .tenant(Some(tenant_id))
                .before(Some(to_json(&before)))
                .after(Some(state.clone()))
                .emit(PERMISSION_UPDATED, state);
            match self
                .store
                .update(after.clone(), before.version, journal)
                .await
            {
                Ok(version) => {
                    after.version = version;
                    return Ok(after);
                }
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes a policy.
    pub async fn delete(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        id: Uuid,
        precondition: Precondition,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.owned(caller, tenant_id, id).await?;
            check_precondition(precondition, before.version)?;
            let state = to_json(&before);
            let journal = caller
                .journal_of(&PERMISSION_DELETED, "permission")
                .resource(id)
                .tenant(Some(tenant_id))
                .before(Some(state.clone()))
                .emit(PERMISSION_DELETED, state);
            match self.store.delete(id, before.version, journal).await {
                Err(TenancyError::Stale) => after_stale(precondition, attempt)?,
                other => return other,
            }
        }
    }
}

/// A key as its audit entries show it: `last_used_at` is a usage stamp written outside any
/// change, so it is left out and every entry's state is exactly what the change replaced.
fn key_state(key: &ApiKey) -> Value {
    let mut v = to_json(key);
    if let Some(o) = v.as_object_mut() {
        o.remove("last_used_at");
    }
    v
}

/// A freshly minted key: the plaintext exists only in this value.
#[derive(Debug, Clone)]
pub struct MintedKey {
    /// The stored record.
    pub key: ApiKey,
    /// The key itself, shown once.
    pub plaintext: String,
}

/// API keys and authentication.
pub struct ApiKeyService {
    store: Arc<dyn ApiKeyStore>,
    tenants: Arc<TenantService>,
    clock: Arc<dyn Clock>,
    bootstrap_digest: Option<String>,
}

/// Shortest accepted bootstrap key.
pub const MIN_BOOTSTRAP_KEY_LEN: usize = 32;

impl ApiKeyService {
    /// Wires the service; `bootstrap` is `STRATUM_ADMIN_API_KEY` (checked for length by the caller).
    pub fn new(
        store: Arc<dyn ApiKeyStore>,
        tenants: Arc<TenantService>,
        clock: Arc<dyn Clock>,
        bootstrap: Option<&str>,
    ) -> Self {
        let bootstrap_digest = bootstrap.map(|k| sha256_hex(k.as_bytes()));
        Self {
            store,
            tenants,
            clock,
            bootstrap_digest,
        }
    }

    /// The actor a presented key stands for; `None` when unknown or revoked.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> std::result::Result<Option<Actor>, stratum_core::StoreError> {
        // A key of a shape no stored key has costs neither a digest nor a lookup.
        let shaped = stratum_crypto::is_api_key_shaped(presented);
        if !shaped && self.bootstrap_digest.is_none() {
            return Ok(None);
        }
        let digest = sha256_hex(presented.as_bytes());
        if let Some(b) = &self.bootstrap_digest {
            if constant_time_eq(b.as_bytes(), digest.as_bytes()) {
                return Ok(Some(Actor {
                    kind: ActorKind::Bootstrap,
                    scope: Scope::Admin,
                    tenant: None,
                }));
            }
        }
        if !shaped {
            return Ok(None);
        }
        // The lookup is by digest, so timing reveals nothing about stored keys.
        let Some(found) = self.store.find_by_hash(digest).await? else {
            return Ok(None);
        };
        if found.key.revoked_at.is_some() {
            return Ok(None);
        }
        let tenant = match (found.key.tenant_id, found.tenant_path) {
            (None, _) => None,
            (Some(id), Some(path)) => Some(TenantScope { id, path }),
            // A scoped key whose tenant vanished grants nothing.
            (Some(_), None) => return Ok(None),
        };
        let scope = found
            .key
            .scopes
            .iter()
            .copied()
            .max()
            .unwrap_or(Scope::Read);
        let store = Arc::clone(&self.store);
        let id = found.key.id;
        if let Err(e) = store.touch(id).await {
            tracing::debug!(error = %e, "could not record key use");
        }
        Ok(Some(Actor {
            kind: ActorKind::ApiKey(id),
            scope,
            tenant,
        }))
    }

    fn require_global_admin(caller: &Caller) -> Result<()> {
        if !caller.actor.is_global() || !caller.actor.has_scope(Scope::Admin) {
            return Err(TenancyError::Forbidden(
                "api keys need an admin key that is not tenant-scoped".into(),
            ));
        }
        Ok(())
    }

    /// Mints a key.
    pub async fn create(
        &self,
        caller: &Caller,
        tenant_id: Option<Uuid>,
        name: Option<String>,
        scopes: Option<Vec<String>>,
    ) -> Result<MintedKey> {
        Self::require_global_admin(caller)?;
        let scopes = parse_scopes(scopes.as_deref())?;
        let name = validate_key_name(name)?;
        if let Some(t) = tenant_id {
            self.tenants.visible_active(caller, t).await?;
        }
        let plaintext = generate_api_key();
        let key = ApiKey {
            id: new_id(),
            tenant_id,
            name,
            key_prefix: plaintext.chars().take(10).collect(),
            scopes,
            created_at: self.clock.now(),
            last_used_at: None,
            revoked_at: None,
        };
        let journal = caller
            .journal("api_key.created", "api_key")
            .resource(key.id)
            .tenant(tenant_id)
            .after(Some(key_state(&key)));
        self.store
            .create(key.clone(), sha256_hex(plaintext.as_bytes()), journal)
            .await?;
        Ok(MintedKey { key, plaintext })
    }

    /// Lists keys.
    pub async fn list(&self, caller: &Caller, tenant_id: Option<Uuid>) -> Result<Vec<ApiKey>> {
        Self::require_global_admin(caller)?;
        Ok(self.store.list(tenant_id).await?)
    }

    /// Revokes a key.
    pub async fn revoke(&self, caller: &Caller, id: Uuid) -> Result<()> {
        Self::require_global_admin(caller)?;
        let before = self
            .store
            .get(id)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or(TenancyError::ApiKeyNotFound)?;
        let now = self.clock.now();
        let mut after = before.clone();
        after.revoked_at = Some(now);
        let journal = caller
            .journal("api_key.revoked", "api_key")
            .resource(id)
            .tenant(before.tenant_id)
            .before(Some(key_state(&before)))
            .after(Some(key_state(&after)));
        // The store revokes only a key that is still unrevoked, so of concurrent revokes
        // exactly one commits (and journals); the others find it gone.
        self.store.revoke(id, now, journal).await
    }
}
