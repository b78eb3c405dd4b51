//! The storage as operations see it: whether it can serve (readiness) and how its
//! connection pool is doing (metrics). The HTTP layer's `/ready` and `/metrics` read
//! storage only through this port.

use async_trait::async_trait;
use thiserror::Error;

/// Why the storage cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NotReady {
    /// It cannot be reached.
    #[error("storage unavailable")]
    Unavailable,
    /// It is reachable but its schema is behind this build's migrations.
    #[error("database migrations are not current")]
    MigrationsPending,
}

/// Connection-pool figures, as gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open.
    pub size: u64,
    /// Connections idle.
    pub idle: u64,
    /// Callers waiting for a connection.
    pub waiting: u64,
    /// Connections allowed.
    pub max_size: u64,
}

/// Readiness and pool figures of the storage.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait StorageProbe: Send + Sync {
    /// `Ok` when the storage is reachable and its schema current.
    async fn ready(&self) -> Result<(), NotReady>;

    /// The connection pool's figures now (no I/O).
    fn pool_stats(&self) -> PoolStats;
}
