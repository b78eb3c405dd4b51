//! API keys and authentication.

use std::sync::Arc;

use serde_json::Value;
use stratum_core::{new_id, Actor, ActorKind, Caller, Clock, Scope, TenantScope};
use stratum_crypto::{constant_time_eq, generate_api_key, sha256_hex};
use uuid::Uuid;

use super::{to_json, Result, TenantService};
use crate::model::*;
use crate::ports::*;
use crate::TenancyError;

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
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use stratum_core::{ActorKind, Scope, SystemClock};
    /// use stratum_tenancy::{ApiKeyService, MockApiKeyStore, MockTenantStore, TenantService};
    ///
    /// let bootstrap = "an-admin-key-of-at-least-32-characters";
    /// let mut keys = MockApiKeyStore::new();
    /// // A presented key is looked up by its SHA-256 digest only.
    /// keys.expect_find_by_hash().returning(|_| Ok(None));
    /// let tenants = Arc::new(TenantService::new(
    ///     Arc::new(MockTenantStore::new()),
    ///     Arc::new(SystemClock),
    /// ));
    /// let service = ApiKeyService::new(Arc::new(keys), tenants, Arc::new(SystemClock), Some(bootstrap));
    ///
    /// let admin = service.authenticate(bootstrap).await.unwrap().unwrap();
    /// assert_eq!(admin.kind, ActorKind::Bootstrap);
    /// assert_eq!(admin.scope, Scope::Admin);
    /// let minted_shape = format!("sk_{}", "a".repeat(43));
    /// assert!(service.authenticate(&minted_shape).await.unwrap().is_none());
    /// assert!(service.authenticate("guess").await.unwrap().is_none());
    /// # });
    /// ```
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

    /// Mints a key.
    pub async fn create(
        &self,
        caller: &Caller,
        tenant_id: Option<Uuid>,
        name: Option<String>,
        scopes: Option<Vec<String>>,
    ) -> Result<MintedKey> {
        caller.require_global_admin()?;
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
        caller.require_global_admin()?;
        Ok(self.store.list(tenant_id).await?)
    }

    /// Revokes a key.
    pub async fn revoke(&self, caller: &Caller, id: Uuid) -> Result<()> {
        caller.require_global_admin()?;
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
