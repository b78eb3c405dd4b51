//! Stratum's PostgreSQL adapters: the diesel schema, every store port, the journal write
//! path (audit + outbox + fan-out in the mutation's transaction), the delivery queue and
//! the embedded migrations.

pub mod audit;
pub mod cached;
pub mod chain;
mod combine;
pub mod consent;
pub mod error;
pub mod idempotency;
pub mod journal;
pub mod keys;
pub mod listen;
pub mod maintenance;
pub mod migrate;
pub mod partitions;
mod pipeline;
pub mod pool;
pub mod probe;
pub mod replays;
pub mod schema;
pub mod status;
pub mod tenancy;
pub mod tx;
pub mod wake;
pub mod webhooks;

pub use audit::PgAuditLog;
pub use cached::{Cached, CachedExt};
pub use chain::{run_sealer, seal_pass};
pub use consent::PgConsentStore;
pub use error::{map_pool_error, map_query_error};
pub use journal::{append, record, stratum_trail, PgAuditSink, DELIVERY_CHANNEL};
pub use listen::listen_for_deliveries;
pub use maintenance::PgMaintenanceStore;
pub use migrate::{migrations_current, run_migrations, MigrateError};
pub use partitions::{create_partitions_ahead, run_partition_keeper};
pub use pool::{connect, Pool, PoolConfig, PooledConn};
pub use probe::PgStorageProbe;
pub use replays::PgReplayStore;
pub use tenancy::{PgApiKeyStore, PgConfigStore, PgPermissionStore, PgTenantStore};
pub use webhooks::{
    queue_snapshot, PgDeliveryQueue, PgDeliveryStore, PgWebhookStore, QueueSnapshot,
};
