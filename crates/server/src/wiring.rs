//! The composition root: adapters into ports, ports into services, services into state.

use std::sync::Arc;

use stratum_api::AppState;
use stratum_audit::AuditService;
use stratum_core::{Clock, SystemClock};
use stratum_crypto::SharedKeyring;
use stratum_postgres::{
    PgApiKeyStore, PgAuditLog, PgConfigStore, PgPermissionStore, PgTenantStore, Pool,
};
use stratum_tenancy::{ApiKeyService, ConfigService, PermissionService, TenantService};

/// Builds the application state over `pool`.
pub fn app_state(pool: Pool, keyring: SharedKeyring, admin_api_key: Option<&str>) -> AppState {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tenants = Arc::new(TenantService::new(
        Arc::new(PgTenantStore::new(pool.clone())),
        clock.clone(),
    ));
    let config = Arc::new(ConfigService::new(
        tenants.clone(),
        Arc::new(PgConfigStore::new(pool.clone())),
        keyring,
        clock.clone(),
    ));
    let permissions = Arc::new(PermissionService::new(
        tenants.clone(),
        Arc::new(PgPermissionStore::new(pool.clone())),
        clock.clone(),
    ));
    let api_keys = Arc::new(ApiKeyService::new(
        Arc::new(PgApiKeyStore::new(pool.clone())),
        tenants.clone(),
        clock,
        admin_api_key,
    ));
    let audit = Arc::new(AuditService::new(Arc::new(PgAuditLog::new(pool.clone()))));
    AppState {
        pool,
        tenants,
        config,
        permissions,
        api_keys,
        audit,
    }
}
