//! The composition root: adapters into ports, ports into services, services into state,
//! and the start-up that `serve` and `worker` share ([`Process`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use stratum_api::metrics::Metrics;
use stratum_api::ratelimit::{RateLimitConfig, RateLimiter};
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

use crate::background::Background;
use crate::config::{DbArgs, KeyArgs, SealArgs, ServeArgs, WebhookArgs};

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

/// What the HTTP API takes from the configuration beyond its adapters. The default is an
/// API without a bootstrap key, rate limits or failed-authentication limit, with the default
/// body timeout and retention windows.
pub struct ApiSettings {
    /// The bootstrap global admin key.
    pub admin_api_key: Option<String>,
    /// Requests per API key.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Failed authentications per client address.
    pub auth_failures: Option<Arc<RateLimiter>>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// The windows of `POST /maintenance/purge-expired`.
    pub retention: RetentionConfig,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            admin_api_key: None,
            rate_limiter: None,
            auth_failures: None,
            body_timeout: stratum_api::middleware::DEFAULT_BODY_TIMEOUT,
            retention: RetentionConfig::default(),
        }
    }
}

impl ApiSettings {
    /// The settings of `stratum serve`.
    pub fn from_args(args: &ServeArgs) -> Self {
        let per_minute = args.auth_failures_per_minute;
        Self {
            admin_api_key: args.admin_api_key.clone(),
            rate_limiter: RateLimiter::new(RateLimitConfig {
                per_second: args.rate_limit_per_second,
                burst: args.rate_limit_burst,
                limit_bootstrap: args.rate_limit_bootstrap,
            })
            .map(Arc::new),
            auth_failures: (per_minute > 0)
                .then(|| {
                    RateLimiter::new(RateLimitConfig {
                        per_second: f64::from(per_minute) / 60.0,
                        burst: f64::from(per_minute),
                        limit_bootstrap: true,
                    })
                })
                .flatten()
                .map(Arc::new),
            body_timeout: Duration::from_millis(args.request_body_timeout_ms),
            retention: args.retention.config(),
        }
    }
}

/// Builds the application state over `pool`, with `settings` and the process's `metrics`.
pub fn app_state(
    pool: Pool,
    keyring: SharedKeyring,
    out: Outbound,
    metrics: Arc<Metrics>,
    settings: ApiSettings,
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
        settings.admin_api_key.as_deref(),
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
    let maintenance = maintenance(pool.clone(), keyring.clone(), settings.retention);
    AppState {
        metrics,
        rate_limiter: settings.rate_limiter,
        body_timeout: settings.body_timeout,
        auth_failures: settings.auth_failures,
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
        breaker_threshold: cfg.breaker_threshold,
        ..DispatcherConfig::default()
    };
    let queue = PgDeliveryQueue::new(pool)
        .with_breaker(cfg.breaker())
        .with_trace_context(crate::telemetry::exporting());
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

/// A running process's shared parts, started from the configuration the same way for
/// `serve` and `worker`: the database migrated and its keys checked, the pool, the keyring,
/// the outbound client, the metrics registry, and the one handle that owns every
/// background task.
pub struct Process {
    /// The connection pool of the process.
    pub pool: Pool,
    /// The keyring the whole process shares.
    pub keyring: SharedKeyring,
    /// The delivery client and target guard.
    pub outbound: Outbound,
    /// The metrics registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// Every background task of the process.
    pub background: Background,
}

impl Process {
    /// Reads the keys, migrates the database, opens the pool, refuses to go on when the keys
    /// cannot read the stored secrets, creates the coming weeks' partitions (then keeps
    /// creating them in the background) and builds the outbound client. Nothing is
    /// delivered yet: [`Process::start_work`] does that.
    pub async fn prepare(db: &DbArgs, keys: &KeyArgs, webhook: &WebhookArgs) -> Result<Self> {
        let keyring = SharedKeyring::new(keyring(keys)?);
        migrate(db).await?;
        let pool = pool(db)?;
        check_keys(&pool, &keyring).await?;
        stratum_postgres::create_partitions_ahead(&pool)
            .await
            .map_err(anyhow::Error::msg)
            .context("creating the coming weeks' partitions")?;
        let mut background = Background::new();
        background.spawn(
            "partitions",
            stratum_postgres::run_partition_keeper(
                pool.clone(),
                stratum_postgres::partitions::KEEPER_INTERVAL,
                background.stopping(),
            ),
        );
        Ok(Self {
            outbound: outbound(webhook)?,
            metrics: Arc::new(Metrics::new()),
            pool,
            keyring,
            background,
        })
    }

    /// Starts the rest of the background work: the audit sealer (unless sealing is off),
    /// the queue gauges and, when `deliver`, the delivery worker with its wake-ups and the
    /// replay worker.
    pub fn start_work(
        &mut self,
        db: &DbArgs,
        seal: &SealArgs,
        webhook: &WebhookArgs,
        deliver: bool,
    ) -> Result<()> {
        if let Some(interval) = seal.interval() {
            // A connection of its own: under load every pooled connection is serving
            // requests, and a sealer queueing behind them would let the sealing lag grow.
            let pool = stratum_postgres::connect(
                &db.database_url,
                &stratum_postgres::PoolConfig {
                    max_size: 1,
                    ..Default::default()
                },
            )
            .map_err(anyhow::Error::msg)?;
            let stopping = self.background.stopping();
            self.background.spawn(
                "sealer",
                stratum_postgres::run_sealer(pool, interval, stopping),
            );
        }
        if deliver {
            let wake = Arc::new(tokio::sync::Notify::new());
            let stopping = self.background.stopping();
            self.background.spawn(
                "wake-ups",
                stratum_postgres::listen_for_deliveries(
                    db.database_url.clone(),
                    wake.clone(),
                    stopping.clone(),
                ),
            );
            let replayer = replayer(self.pool.clone(), webhook);
            let replay_stop = stopping.clone();
            self.background
                .spawn("replays", async move { replayer.run(replay_stop).await });
            let dispatcher = dispatcher(
                self.pool.clone(),
                self.keyring.clone(),
                webhook,
                &self.outbound,
            );
            expose_dispatcher(&self.metrics, &dispatcher);
            self.background.spawn("dispatcher", async move {
                dispatcher.run(stopping, wake).await;
            });
        }
        let gauges = queue_gauges(
            self.pool.clone(),
            self.metrics.clone(),
            self.background.stopping(),
        );
        self.background.spawn("queue gauges", gauges);
        Ok(())
    }
}

/// Applies pending migrations.
pub async fn migrate(db: &DbArgs) -> Result<()> {
    let n = stratum_postgres::run_migrations(&db.database_url)
        .await
        .context("migrating")?;
    tracing::info!(applied = n, "migrations current");
    Ok(())
}

/// The process's connection pool.
pub fn pool(db: &DbArgs) -> Result<Pool> {
    stratum_postgres::connect(
        &db.database_url,
        &stratum_postgres::PoolConfig {
            max_size: db.db_pool_size,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)
}

fn keyring(keys: &KeyArgs) -> Result<stratum_crypto::Keyring> {
    stratum_crypto::Keyring::from_env(
        &keys.encryption_key,
        keys.encryption_key_previous
            .as_deref()
            .into_iter()
            .chain(keys.encryption_key_next.as_deref()),
    )
    .context("STRATUM_ENCRYPTION_KEY")
}

/// Refuses to start when the configured keys cannot read the stored secrets; then
/// encrypts with the database's active key when this process holds it.
async fn check_keys(pool: &Pool, keyring: &SharedKeyring) -> Result<()> {
    let ring = keyring.get();
    let maintenance = maintenance(pool.clone(), keyring.clone(), Default::default());
    maintenance
        .check_keys(&ring)
        .await
        .map_err(anyhow::Error::msg)
        .context("refusing to start: the start-up encryption key check failed")?;
    maintenance
        .init_active_key()
        .await
        .map_err(anyhow::Error::msg)
        .context("refusing to start: the active encryption key cannot be read")?;
    Ok(())
}

/// Exposes a running dispatcher on `metrics`: its counters and histograms today. The one
/// place to register more of the dispatcher's figures (per-webhook in flight and
/// concurrency limits, batch sizes, queue age) as another `metrics.register_collector(...)`
/// line.
fn expose_dispatcher(metrics: &Metrics, dispatcher: &Dispatcher) {
    metrics.attach_dispatcher(dispatcher.stats());
    if let Some(b) = dispatcher.stats().breakers.get() {
        metrics.attach_breakers(Arc::clone(b));
    }
    let d = dispatcher.clone();
    metrics.attach_dispatcher_snapshot(Arc::new(move || d.snapshot()));
}

/// Refreshes the queue gauges every few seconds, so scrapes stay cheap, until `stop`.
async fn queue_gauges(
    pool: Pool,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if let Ok(q) = stratum_postgres::queue_snapshot(&pool).await {
            let g = &metrics.queue;
            g.pending.store(q.pending, Relaxed);
            g.due.store(q.due, Relaxed);
            g.oldest_due_age_seconds
                .store(q.oldest_due_age_seconds, Relaxed);
            g.dead_letter.store(q.failed, Relaxed);
            g.inactive_webhooks.store(q.inactive_webhooks, Relaxed);
            g.open_breakers.store(q.open_breakers, Relaxed);
            g.refreshed_at.store(unix_now(), Relaxed);
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
