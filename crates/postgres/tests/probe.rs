//! The storage probe against a real PostgreSQL: ready when migrated, not ready (and why)
//! when a migration is missing or the server cannot be reached, and the pool's figures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use stratum_core::{NotReady, StorageProbe};
use stratum_postgres::{connect, PgStorageProbe, PoolConfig};
use stratum_testkit::TestDb;

#[tokio::test]
async fn ready_until_a_migration_is_missing() {
    let db = TestDb::new().await;
    let cfg = PoolConfig {
        max_size: 3,
        ..Default::default()
    };
    let probe = PgStorageProbe::new(connect(&db.url, &cfg).unwrap());
    assert_eq!(probe.ready().await, Ok(()));
    let stats = probe.pool_stats();
    assert_eq!(stats.max_size, 3);
    assert_eq!(stats.size, 1, "the readiness check opened one connection");
    assert_eq!(stats.idle, 1, "and gave it back");
    assert_eq!(stats.waiting, 0);

    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    diesel::sql_query(
        "DELETE FROM __diesel_schema_migrations
          WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    assert_eq!(probe.ready().await, Err(NotReady::MigrationsPending));
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_unavailable() {
    // Port 1 on the loopback refuses connections.
    let cfg = PoolConfig {
        max_size: 1,
        wait_timeout: std::time::Duration::from_secs(2),
    };
    let probe = PgStorageProbe::new(connect("postgres://nobody@127.0.0.1:1/none", &cfg).unwrap());
    assert_eq!(probe.ready().await, Err(NotReady::Unavailable));
}
