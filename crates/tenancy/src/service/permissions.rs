//! Permission policies.

use std::sync::Arc;

use serde_json::Value;
use stratum_core::{new_id, Caller, Clock, Precondition, Scope};
use uuid::Uuid;

use super::{after_stale, check_precondition, to_json, Result, TenantService};
use crate::events::{PERMISSION_CREATED, PERMISSION_DELETED, PERMISSION_UPDATED};
use crate::model::*;
use crate::ports::*;
use crate::TenancyError;

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
        caller.require(Scope::Read)?;
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
        caller.require(Scope::Read)?;
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
        caller.require(Scope::Write)?;
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
        caller.require(Scope::Write)?;
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
        caller.require(Scope::Write)?;
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
