//! The connection pool.

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool as DeadPool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::AsyncPgConnection;

/// A pool of async PostgreSQL connections.
pub type Pool = DeadPool<AsyncPgConnection>;

/// A connection checked out of the pool.
pub type PooledConn = Object<AsyncPgConnection>;

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Maximum connections.
    pub max_size: usize,
    /// How long a caller waits for a free connection (and for a new one to open)
    /// before the request answers 503.
    pub wait_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
        }
    }
}

/// Builds a pool; connections open lazily, so this succeeds while the database is down.
pub fn connect(database_url: &str, cfg: &PoolConfig) -> Result<Pool, String> {
    let mut config = ManagerConfig::default();
    // No test query on every checkout (a round trip per request): a connection that died
    // with the server fails its first query, which answers 503, and is then dropped.
    config.recycling_method = RecyclingMethod::Fast;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    DeadPool::builder(manager)
        .max_size(cfg.max_size)
        .wait_timeout(Some(cfg.wait_timeout))
        .create_timeout(Some(cfg.wait_timeout))
        .recycle_timeout(Some(cfg.wait_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}
