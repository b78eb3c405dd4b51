//! Embedded migrations, applied under an advisory lock so processes starting together
//! do not race.

use std::collections::HashSet;

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use thiserror::Error;

/// Every migration of `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// An arbitrary, fixed key for `pg_advisory_lock`: "stratum" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x0073_7472_6174_756d;

/// Why migrating failed.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// Could not connect.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Applies pending migrations; returns how many ran. Safe to call from several processes
/// at once: they serialize on an advisory lock and the later ones find nothing to do.
pub async fn run_migrations(database_url: &str) -> Result<usize, MigrateError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .map_err(|e| MigrateError::Connect(e.to_string()))?;
        diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")),
            &mut conn,
        )
        .map_err(|e| MigrateError::Migration(e.to_string()))?;
        let result = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.len())
            .map_err(|e| MigrateError::Migration(e.to_string()));
        // Closing the connection releases the lock too; unlocking early just lets the
        // next process in sooner.
        let _unlocked = diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")),
            &mut conn,
        );
        result
    })
    .await
    .map_err(|e| MigrateError::Migration(e.to_string()))?
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// True when every embedded migration has been applied on `conn`'s database.
pub async fn migrations_current(
    conn: &mut AsyncPgConnection,
) -> Result<bool, diesel::result::Error> {
    let applied: Vec<Version> = diesel_async::RunQueryDsl::load(
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations"),
        conn,
    )
    .await?;
    let applied: HashSet<String> = applied.into_iter().map(|v| v.version).collect();
    let wanted = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(diesel::result::Error::QueryBuilderError)?;
    Ok(wanted
        .iter()
        .all(|m| applied.contains(&m.name().version().to_string())))
}
