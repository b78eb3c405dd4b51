//! Configuration: read from the environment once, into typed values.

use std::net::SocketAddr;

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

/// Settings of `stratum serve` and `stratum worker`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Listen address.
    #[arg(long, env = "STRATUM_BIND", default_value = "127.0.0.1:3001")]
    pub bind: SocketAddr,
    /// Master key for encryption at rest (at least 32 bytes).
    #[arg(long, env = "STRATUM_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: String,
    /// The previous master key, kept for decryption during a rolling restart.
    #[arg(long, env = "STRATUM_ENCRYPTION_KEY_PREVIOUS", hide_env_values = true)]
    pub encryption_key_previous: Option<String>,
    /// Bootstrap global admin key (at least 32 characters).
    #[arg(long, env = "STRATUM_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
}
