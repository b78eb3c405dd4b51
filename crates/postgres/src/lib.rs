//! Stratum's PostgreSQL adapters: the diesel schema, every store port, the journal write
//! path (audit + outbox + fan-out in the mutation's transaction), the delivery queue and
//! the embedded migrations.

pub mod error;
pub mod migrate;
pub mod pool;
pub mod schema;

pub use error::{map_pool_error, map_query_error};
pub use migrate::{migrations_current, run_migrations, MigrateError};
pub use pool::{connect, Pool, PoolConfig, PooledConn};
