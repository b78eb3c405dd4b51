//! Config with inheritance root → leaf, locks and encrypted sensitive values.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use stratum_core::{Caller, Clock, Precondition, Scope, StoreError, KEY_RETRIES};
use stratum_crypto::{CryptoError, SharedKeyring};
use uuid::Uuid;

use super::{after_stale, check_precondition, Result, TenantService};
use crate::events::{CONFIG_DELETED, CONFIG_UPDATED};
use crate::model::*;
use crate::ports::*;
use crate::TenancyError;

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
        caller.require(Scope::Read)?;
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
        caller.require(Scope::Read)?;
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
        caller.require(Scope::Write)?;
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
        caller.require(Scope::Write)?;
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
