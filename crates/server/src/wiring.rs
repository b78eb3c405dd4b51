//! The composition root: adapters into ports, ports into services, services into state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use stratum_api::AppState;
use stratum_audit::AuditService;
use stratum_core::{Clock, SystemClock, TenantDirectory};
use stratum_crypto::SharedKeyring;
use stratum_http_delivery::{ClientConfig, ReqwestDeliveryClient, SsrfGuard};
use stratum_maintenance::{MaintenanceService, RetentionConfig};
use stratum_postgres::{
    PgApiKeyStore, PgAuditLog, PgConfigStore, PgDeliveryQueue, PgDeliveryStore, PgMaintenanceStore,
    PgPermissionStore, PgReplayStore, PgStorageProbe, PgTenantStore, PgWebhookStore, Pool,
};
use stratum_tenancy::{
    ApiKeyService, ConfigService, PermissionService, StoreDirectory, TenantService,
};
use stratum_webhooks::{
    DeliveryClient, Dispatcher, DispatcherConfig, RegistryConfig, ReplayService, Replayer,
    ReplayerConfig, RetryPolicy, UrlGuard, WebhookService,
};

use crate::config::WebhookArgs;

/// The outbound side: one pooled HTTP client and the SSRF guard.
#[derive(Clone)]
pub struct Outbound {
    /// Sends deliveries.
    pub client: Arc<dyn DeliveryClient>,
    /// Checks targets.
    pub guard: Arc<dyn UrlGuard>,
    /// Whether private targets and `http://` are allowed.
    pub allow_private: bool,
    /// `STRATUM_WEBHOOK_MAX_PER_TENANT`.
    pub max_per_tenant: i64,
}

/// Builds the HTTP client and guard from the webhook settings.
pub fn outbound(cfg: &WebhookArgs) -> Result<Outbound> {
    let client = ReqwestDeliveryClient::new(ClientConfig {
        timeout: cfg.timeout(),
        connect_timeout: cfg.timeout().min(Duration::from_secs(5)),
        allow_private: cfg.allow_private_targets,
        max_idle_per_host: (cfg.max_in_flight_per_endpoint as usize).max(8),
        ..ClientConfig::default()
    })
    .context("building the webhook HTTP client")?;
    Ok(Outbound {
        client: Arc::new(client),
        guard: Arc::new(SsrfGuard::new(cfg.allow_private_targets)),
        allow_private: cfg.allow_private_targets,
        max_per_tenant: cfg.max_per_tenant,
    })
}

/// Builds the application state over `pool`.
pub fn app_state(
    pool: Pool,
    keyring: SharedKeyring,
    admin_api_key: Option<&str>,
    out: Outbound,
) -> AppState {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tenant_store: Arc<PgTenantStore> = Arc::new(PgTenantStore::new(pool.clone()));
    let tenants = Arc::new(TenantService::new(tenant_store.clone(), clock.clone()));
    let directory: Arc<dyn TenantDirectory> = Arc::new(StoreDirectory::new(tenant_store));
    let config = Arc::new(ConfigService::new(
        tenants.clone(),
        Arc::new(PgConfigStore::new(pool.clone())),
        keyring.clone(),
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
        clock.clone(),
        admin_api_key,
    ));
    let consent = Arc::new(stratum_consent::ConsentService::new(
        directory.clone(),
        Arc::new(stratum_postgres::PgConsentStore::new(pool.clone())),
        clock.clone(),
    ));
    let webhook_store: Arc<PgWebhookStore> =
        Arc::new(PgWebhookStore::new(pool.clone()).with_max_per_tenant(out.max_per_tenant));
    let replays = Arc::new(ReplayService::new(
        webhook_store.clone(),
        Arc::new(PgReplayStore::new(pool.clone())),
        clock.clone(),
    ));
    let webhooks = Arc::new(WebhookService::new(
        directory,
        webhook_store,
        Arc::new(PgDeliveryStore::new(pool.clone())),
        out.guard,
        out.client,
        keyring.clone(),
        clock,
        RegistryConfig {
            allow_http: out.allow_private,
            events: stratum_api::event_catalogue(),
        },
    ));
    let audit = Arc::new(AuditService::new(Arc::new(PgAuditLog::new(pool.clone()))));
    let maintenance = maintenance(pool.clone(), keyring.clone(), RetentionConfig::default());
    AppState {
        metrics: Arc::new(stratum_api::metrics::Metrics::new()),
        rate_limiter: None,
        body_timeout: stratum_api::middleware::DEFAULT_BODY_TIMEOUT,
        auth_failures: None,
        storage: Arc::new(PgStorageProbe::new(pool.clone())),
        idempotency: Arc::new(crate::idempotency::PgIdempotency::new(pool)),
        tenants,
        config,
        permissions,
        api_keys,
        webhooks,
        replays,
        audit,
        consent,
        maintenance,
    }
}

/// Purge, key rotation and the start-up key check. `keyring` must be the one the rest of
/// the process shares: a rotation switches it for everyone at once.
pub fn maintenance(
    pool: Pool,
    keyring: SharedKeyring,
    retention: RetentionConfig,
) -> Arc<MaintenanceService> {
    Arc::new(MaintenanceService::new(
        Arc::new(PgMaintenanceStore::new(pool)),
        keyring,
        Arc::new(SystemClock),
        retention,
    ))
}

/// Just the API key service, for the command line.
pub fn api_keys(pool: Pool) -> ApiKeyService {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tenants = Arc::new(TenantService::new(
        Arc::new(PgTenantStore::new(pool.clone())),
        clock.clone(),
    ));
    ApiKeyService::new(Arc::new(PgApiKeyStore::new(pool)), tenants, clock, None)
}

/// Builds the delivery worker.
pub fn dispatcher(
    pool: Pool,
    keyring: SharedKeyring,
    cfg: &WebhookArgs,
    out: &Outbound,
) -> Dispatcher {
    let policy = RetryPolicy {
        base: Duration::from_millis(cfg.backoff_base_ms),
        max: Duration::from_millis(cfg.backoff_max_ms.max(cfg.backoff_base_ms)),
        max_attempts: cfg.max_attempts,
    };
    let concurrency = cfg.worker_concurrency as usize;
    let config = DispatcherConfig {
        concurrency,
        per_webhook: cfg.max_in_flight_per_endpoint as usize,
        initial_per_webhook: cfg.initial_in_flight_per_endpoint as usize,
        batch_size: concurrency.clamp(16, 512),
        // Long enough for a claimed delivery to wait for its webhook's slot and then be
        // sent; short enough that a crashed worker's deliveries come back soon.
        lease: cfg.timeout() * 3 + Duration::from_secs(5),
        ..DispatcherConfig::default()
    };
    let queue = PgDeliveryQueue::new(pool).with_breaker(cfg.breaker());
    let transitions = queue.transitions();
    let dispatcher = Dispatcher::new(
        Arc::new(queue),
        out.client.clone(),
        keyring,
        Arc::new(SystemClock),
        policy,
        config,
    );
    let _ = dispatcher.stats().breakers.set(transitions);
    dispatcher
}

/// Builds the replay worker.
pub fn replayer(pool: Pool, cfg: &WebhookArgs) -> Replayer {
    Replayer::new(
        Arc::new(PgReplayStore::new(pool)),
        ReplayerConfig {
            batch: cfg.replay_batch_size,
            max_backlog: cfg.replay_max_backlog,
            pause: Duration::from_millis(cfg.replay_pause_ms),
            ..ReplayerConfig::default()
        },
    )
}
