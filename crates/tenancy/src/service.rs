//! The tenancy use cases.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use stratum_core::{
    new_id, Actor, ActorKind, Caller, Clock, Limit, Scope, StoreError, TenantPath, TenantScope,
    KEY_RETRIES,
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
        };
        let state = to_json(&tenant);
        let journal = caller
            .journal("tenant.created", "tenant")
            .resource(id)
            .tenant(Some(id))
            .after(Some(state.clone()))
            .emit(state);
        self.store.create(tenant.clone(), journal).await?;
        Ok(tenant)
    }

    /// Changes name, slug or metadata.
    pub async fn update(&self, caller: &Caller, id: Uuid, patch: TenantPatch) -> Result<Tenant> {
        let before = self.visible_active(caller, id).await?;
        let mut after = before.clone();
        if let Some(name) = patch.name {
            after.name = validate_name(&name)?;
        }
        if let Some(slug) = patch.slug {
            after.slug = validate_slug(&slug)?;
        }
        if patch.metadata.is_some() {
            after.metadata = validate_metadata("metadata", patch.metadata)?;
        }
        if after == before {
            return Ok(before);
        }
        after.updated_at = self.clock.now();
        let state = to_json(&after);
        let journal = caller
            .journal("tenant.updated", "tenant")
            .resource(id)
            .tenant(Some(id))
            .before(Some(to_json(&before)))
            .after(Some(state.clone()))
            .emit(state);
        self.store.update(after.clone(), journal).await?;
        Ok(after)
    }

    /// Archives a tenant without active children.
    pub async fn archive(&self, caller: &Caller, id: Uuid) -> Result<()> {
        let before = self.visible_active(caller, id).await?;
        let now = self.clock.now();
        let mut after = before.clone();
        after.status = TenantStatus::Archived;
        after.deleted_at = Some(now);
        after.updated_at = now;
        let state = to_json(&after);
        let journal = caller
            .journal("tenant.deleted", "tenant")
            .resource(id)
            .tenant(Some(id))
            .before(Some(to_json(&before)))
            .after(Some(state.clone()))
            .emit(state);
        self.store.archive(id, now, journal).await
    }

    /// Moves a tenant (and its subtree) under another parent.
    pub async fn move_to(&self, caller: &Caller, id: Uuid, new_parent_id: Uuid) -> Result<Tenant> {
        let before = self.visible_active(caller, id).await?;
        let parent = self.visible_active(caller, new_parent_id).await?;
        if before.ancestry_path.contains(&parent.ancestry_path) {
            return Err(TenancyError::CycleDetected);
        }
        if before.parent_id == Some(new_parent_id) {
            return Ok(before);
        }
        let to = parent.ancestry_path.child(id);
        let now = self.clock.now();
        let mut after = before.clone();
        after.parent_id = Some(new_parent_id);
        after.depth = to.depth() as i32;
        after.ancestry_path = to.clone();
        after.updated_at = now;
        let state = to_json(&after);
        let old_ancestors: Vec<Uuid> = before.ancestry_path.ids();
        let journal = caller
            .journal("tenant.moved", "tenant")
            .resource(id)
            .tenant(Some(id))
            .before(Some(to_json(&before)))
            .after(Some(state.clone()))
            .emit(json!({"tenant": state, "previous_parent_id": before.parent_id}))
            .also_to(old_ancestors);
        self.store
            .move_subtree(
                id,
                new_parent_id,
                before.ancestry_path.clone(),
                to,
                now,
                journal,
            )
            .await?;
        Ok(after)
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
        let chain = tenant.ancestry_path.ids();
        let mut stored = self.store.entries_for(chain.clone()).await?;
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

    /// Sets a key on the tenant itself.
    pub async fn put(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        key: &str,
        value: Value,
        locked: Option<bool>,
        sensitive: Option<bool>,
    ) -> Result<ConfigEntry> {
        let key = validate_config_key(key)?;
        let tenant = self.tenants.visible_active(caller, tenant_id).await?;
        let resolved = self.resolve(&tenant).await?;
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
            .journal("config.updated", "config")
            .resource(format!("{tenant_id}/{key}"))
            .tenant(Some(tenant_id))
            .before(own.map(ConfigEntry::redacted))
            .after(Some(after.clone()))
            .emit(after);
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
        };
        let mut tries = 0;
        loop {
            match self
                .store
                .put(stored.clone(), ancestors.clone(), journal.clone())
                .await
            {
                Ok(_) => return Ok(entry),
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
    pub async fn delete(&self, caller: &Caller, tenant_id: Uuid, key: &str) -> Result<()> {
        let key = validate_config_key(key).map_err(|_| TenancyError::ConfigNotFound)?;
        self.tenants.visible_active(caller, tenant_id).await?;
        // The tenant's own entry, even where an ancestor's lock hides it from the resolved view.
        let stored = self.store.entries_for(vec![tenant_id]).await?;
        let own = stored
            .iter()
            .find(|e| e.key == key && e.tenant_id == tenant_id)
            .ok_or(TenancyError::ConfigNotFound)?;
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
            .journal("config.deleted", "config")
            .resource(format!("{tenant_id}/{key}"))
            .tenant(Some(tenant_id))
            .before(Some(before.clone()))
            .emit(json!({"tenant_id": tenant_id, "key": key, "previous": before}));
        self.store.delete(tenant_id, key, journal).await
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
        };
        let state = to_json(&policy);
        let journal = caller
            .journal("permission.created", "permission")
            .resource(policy.id)
            .tenant(Some(tenant_id))
            .after(Some(state.clone()))
            .emit(state);
        self.store.create(policy.clone(), journal).await?;
        Ok(policy)
    }

    /// Changes value and/or mode.
    pub async fn update(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        id: Uuid,
        value: Option<Value>,
        mode: Option<String>,
    ) -> Result<PermissionPolicy> {
        let mode = mode.map(|m| PermissionMode::parse(&m)).transpose()?;
        let before = self.owned(caller, tenant_id, id).await?;
        let mut after = before.clone();
        if let Some(v) = value {
            after.value = v;
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
            .journal("permission.updated", "permission")
            .resource(id)
            .tenant(Some(tenant_id))
            .before(Some(to_json(&before)))
            .after(Some(state.clone()))
            .emit(state);
        self.store.update(after.clone(), journal).await?;
        Ok(after)
    }

    /// Removes a policy.
    pub async fn delete(&self, caller: &Caller, tenant_id: Uuid, id: Uuid) -> Result<()> {
        let before = self.owned(caller, tenant_id, id).await?;
        let state = to_json(&before);
        let journal = caller
            .journal("permission.deleted", "permission")
            .resource(id)
            .tenant(Some(tenant_id))
            .before(Some(state.clone()))
            .emit(state);
        self.store.delete(id, journal).await
    }
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
        if let Some(n) = &name {
            if n.chars().count() > 255 {
                return Err(TenancyError::invalid(
                    "name",
                    "must be at most 255 characters",
                ));
            }
        }
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
            .after(Some(to_json(&key)));
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
            .before(Some(to_json(&before)))
            .after(Some(to_json(&after)));
        self.store.revoke(id, now, journal).await
    }
}
