//! Configuration: read from the environment once, into typed values.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Settings every subcommand that touches the database needs.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections per process.
    #[arg(long, env = "STRATUM_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
}

/// Keys for encryption at rest.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Master key for encryption at rest (at least 32 bytes).
    #[arg(long, env = "STRATUM_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: String,
    /// The previous master key, kept for decryption during a rolling restart.
    #[arg(long, env = "STRATUM_ENCRYPTION_KEY_PREVIOUS", hide_env_values = true)]
    pub encryption_key_previous: Option<String>,
    /// The next master key, readable before a rolling rotation to it; new secrets are
    /// encrypted with it once the database's active key is it.
    #[arg(long, env = "STRATUM_ENCRYPTION_KEY_NEXT", hide_env_values = true)]
    pub encryption_key_next: Option<String>,
}

/// Sealing of the audit log into its hash chain.
#[derive(Debug, Clone, Args)]
pub struct SealArgs {
    /// Milliseconds between sealing passes (0 turns sealing off in this process).
    #[arg(long, env = "STRATUM_AUDIT_SEAL_INTERVAL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub audit_seal_interval_ms: u64,
}

impl SealArgs {
    /// The interval between passes; `None` when sealing is off.
    pub fn interval(&self) -> Option<Duration> {
        (self.audit_seal_interval_ms > 0)
            .then(|| Duration::from_millis(self.audit_seal_interval_ms))
    }
}

/// Webhook delivery settings.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Allow `http://` and loopback/private targets (development and tests only).
    #[arg(long, env = "STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,
    /// Attempts before a delivery is dead-lettered.
    #[arg(long, env = "STRATUM_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// First retry delay in ms; doubles per attempt, ±20 % jitter.
    #[arg(long, env = "STRATUM_WEBHOOK_BACKOFF_BASE_MS", default_value_t = 5000)]
    pub backoff_base_ms: u64,
    /// Cap on one retry delay in ms.
    #[arg(
        long,
        env = "STRATUM_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub backoff_max_ms: u64,
    /// Per-attempt timeout in ms (connect ≤ 5 s).
    #[arg(long, env = "STRATUM_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub timeout_ms: u64,
    /// Deliveries in flight per process.
    #[arg(long, env = "STRATUM_WORKER_CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub worker_concurrency: u64,
    /// Webhooks per tenant, and global webhooks, at most (409 beyond).
    #[arg(long, env = "STRATUM_WEBHOOK_MAX_PER_TENANT", default_value_t = 1_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub max_per_tenant: i64,
    /// Most deliveries in flight to one webhook: the cap of its adaptive limit.
    #[arg(long, env = "STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_in_flight_per_endpoint: u64,
    /// Deliveries in flight to a webhook before its receiver's pace is known: where its
    /// adaptive limit starts (at most the maximum above).
    #[arg(long, env = "STRATUM_WEBHOOK_INITIAL_IN_FLIGHT_PER_ENDPOINT", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub initial_in_flight_per_endpoint: u64,
    /// Consecutive failed attempts that open a webhook's circuit breaker; 0 turns it off.
    #[arg(long, env = "STRATUM_WEBHOOK_BREAKER_THRESHOLD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub breaker_threshold: u32,
    /// The first cool-down of an open breaker, in ms (doubled after each failed probe).
    #[arg(long, env = "STRATUM_WEBHOOK_BREAKER_COOLDOWN_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub breaker_cooldown_ms: u64,
    /// The longest cool-down of an open breaker, in ms.
    #[arg(long, env = "STRATUM_WEBHOOK_BREAKER_COOLDOWN_MAX_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub breaker_cooldown_max_ms: u64,
    /// A breaker open this long (ms) disables its webhook; 0: never.
    #[arg(
        long,
        env = "STRATUM_WEBHOOK_DISABLE_AFTER_MS",
        default_value_t = 432_000_000
    )]
    pub disable_after_ms: u64,
    /// Events a replay enqueues per step (one short transaction each).
    #[arg(long, env = "STRATUM_REPLAY_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub replay_batch_size: i64,
    /// A replay waits while this many of its deliveries are still pending.
    #[arg(long, env = "STRATUM_REPLAY_MAX_BACKLOG", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub replay_max_backlog: i64,
    /// Pause between two replay steps, in ms.
    #[arg(long, env = "STRATUM_REPLAY_PAUSE_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub replay_pause_ms: u64,
}

impl WebhookArgs {
    /// The circuit breaker's settings.
    pub fn breaker(&self) -> stratum_webhooks::BreakerConfig {
        stratum_webhooks::BreakerConfig {
            threshold: self.breaker_threshold,
            cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            cooldown_max: Duration::from_millis(
                self.breaker_cooldown_max_ms.max(self.breaker_cooldown_ms),
            ),
            disable_after: (self.disable_after_ms > 0)
                .then(|| Duration::from_millis(self.disable_after_ms)),
        }
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Settings of `stratum serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// Listen address.
    #[arg(long, env = "STRATUM_BIND", default_value = "127.0.0.1:3001")]
    pub bind: SocketAddr,
    /// Bootstrap global admin key (at least 32 characters).
    #[arg(long, env = "STRATUM_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Serve the API only; run no delivery worker in this process.
    #[arg(long)]
    pub no_worker: bool,
    /// Sustained requests per second per API key (0 turns limiting off).
    #[arg(long, env = "STRATUM_RATE_LIMIT_PER_SECOND", default_value_t = 100.0)]
    pub rate_limit_per_second: f64,
    /// Requests one key may make in a burst.
    #[arg(long, env = "STRATUM_RATE_LIMIT_BURST", default_value_t = 200.0)]
    pub rate_limit_burst: f64,
    /// Milliseconds a request body may take to arrive (408 after).
    #[arg(long, env = "STRATUM_REQUEST_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_body_timeout_ms: u64,
    /// Failed authentications per minute per client address (0 turns the limit off).
    #[arg(long, env = "STRATUM_AUTH_FAILURES_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub auth_failures_per_minute: u32,
    /// Limit the bootstrap admin key too (off by default).
    #[arg(long, env = "STRATUM_RATE_LIMIT_BOOTSTRAP", default_value_t = false, action = clap::ArgAction::Set)]
    pub rate_limit_bootstrap: bool,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub seal: SealArgs,
}

/// The windows of `POST /maintenance/purge-expired`.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Default window for deliveries, events and consent records, in days.
    #[arg(long, env = "STRATUM_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub retention_days: i64,
    /// Window for audit entries, in days.
    #[arg(long, env = "STRATUM_AUDIT_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
    pub audit_retention_days: i64,
}

impl RetentionArgs {
    /// The windows as the maintenance service takes them.
    pub fn config(&self) -> stratum_maintenance::RetentionConfig {
        stratum_maintenance::RetentionConfig {
            retention_days: self.retention_days,
            audit_retention_days: self.audit_retention_days,
        }
    }
}

/// Settings of `stratum worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Listen address of the worker's operations port (`/health`, `/ready`, `/metrics`).
    #[arg(long, env = "STRATUM_WORKER_BIND", default_value = "127.0.0.1:3002")]
    pub worker_bind: SocketAddr,
}

#[derive(clap::Parser)]
struct WebhookOnly {
    #[command(flatten)]
    webhook: WebhookArgs,
}

impl WebhookArgs {
    /// The settings as the environment (or the defaults) give them.
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::Parser as _;
        WebhookOnly::try_parse_from(["stratum"]).map(|w| w.webhook)
    }
}
