//! What handlers share.

use std::sync::Arc;

use stratum_audit::AuditService;
use stratum_core::StorageProbe;
use stratum_tenancy::{ApiKeyService, ConfigService, PermissionService, TenantService};

/// Shared application state, built once by the composition root.
pub struct AppState {
    /// Metrics registry.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-key rate limiter (`None`: off).
    pub rate_limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// How long a request body may take to arrive (`STRATUM_REQUEST_BODY_TIMEOUT_MS`).
    pub body_timeout: std::time::Duration,
    /// Failed authentications per client address (`None`: unlimited).
    pub auth_failures: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// Storage readiness and pool figures (`/ready`, `/metrics`).
    pub storage: Arc<dyn StorageProbe>,
    /// Where idempotency keys and their request-wide transactions live.
    pub idempotency: Arc<dyn crate::idempotency::IdempotencyStore>,
    /// Tenants.
    pub tenants: Arc<TenantService>,
    /// Config.
    pub config: Arc<ConfigService>,
    /// Permission policies.
    pub permissions: Arc<PermissionService>,
    /// API keys and authentication.
    pub api_keys: Arc<ApiKeyService>,
    /// Webhooks and deliveries.
    pub webhooks: Arc<stratum_webhooks::WebhookService>,
    /// Webhook replays.
    pub replays: Arc<stratum_webhooks::ReplayService>,
    /// The audit log.
    pub audit: Arc<AuditService>,
    /// Consent records.
    pub consent: Arc<stratum_consent::ConsentService>,
    /// Retention purge and encryption-key rotation.
    pub maintenance: Arc<stratum_maintenance::MaintenanceService>,
}
