//! The storage probe on PostgreSQL: readiness (reachable, migrations current) and the
//! connection pool's figures.

use async_trait::async_trait;
use stratum_core::{NotReady, PoolStats, StorageProbe};

use crate::{migrations_current, Pool};

/// [`StorageProbe`] over the pool.
#[derive(Clone)]
pub struct PgStorageProbe {
    pool: Pool,
}

impl PgStorageProbe {
    /// A probe of `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl StorageProbe for PgStorageProbe {
    async fn ready(&self) -> Result<(), NotReady> {
        let mut conn = self.pool.get().await.map_err(|_| NotReady::Unavailable)?;
        match migrations_current(&mut conn).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotReady::MigrationsPending),
            Err(_) => Err(NotReady::Unavailable),
        }
    }

    fn pool_stats(&self) -> PoolStats {
        let s = self.pool.status();
        PoolStats {
            size: s.size as u64,
            idle: s.available as u64,
            waiting: s.waiting as u64,
            max_size: s.max_size as u64,
        }
    }
}
