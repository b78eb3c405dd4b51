//! The connection pool.

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool as DeadPool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::FutureExt;

use crate::error::{note_fault, recent_fault};

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
///
/// `database_url` may name several servers of a replicated cluster
/// (`postgres://h1:5432,h2:5432/db?target_session_attrs=read-write`): a new connection goes
/// to the first one that accepts writes, so after a failover the pool finds the new primary.
/// Connections that died with the old primary are dropped on their next checkout; and for a
/// while after any sign of a failover (a lost connection, a write refused as read-only:
/// [`crate::error::FAULT_WINDOW`]) every checkout first asks the server whether it still
/// takes writes, so an idle connection to a demoted server is dropped instead of reused.
pub fn connect(database_url: &str, cfg: &PoolConfig) -> Result<Pool, String> {
    let mut config = ManagerConfig::default();
    // No test query on every checkout in the steady state (a round trip per request): a
    // connection that died with the server fails its first query, which answers 503 and
    // starts the window in which checkouts are verified.
    config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
        async move {
            if !recent_fault() {
                return Ok(());
            }
            still_writable(conn).await
        }
        .boxed()
    }));
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

#[derive(diesel::QueryableByName)]
struct ReadOnly {
    #[diesel(sql_type = diesel::sql_types::Text)]
    transaction_read_only: String,
}

/// Fails unless `conn`'s server still takes writes from this session.
async fn still_writable(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    let ro: ReadOnly = diesel::sql_query("SHOW transaction_read_only")
        .get_result(conn)
        .await?;
    if ro.transaction_read_only == "off" {
        return Ok(());
    }
    note_fault();
    tracing::warn!("dropping a pooled connection to a server that no longer takes writes");
    Err(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
        Box::new("the server no longer takes writes".to_owned()),
    ))
}
