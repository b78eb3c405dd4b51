//! Test helpers: a fresh PostgreSQL database per test, cloned from a template migrated once
//! per migration set, so database tests run in parallel (and across nextest's processes).

use std::path::Path;

use anyhow::{Context, Result};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The server the tests use: the project's own cluster started by `make db-up`.
pub fn server_url() -> String {
    std::env::var("STRATUM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432".to_owned())
}

fn db_url(name: &str) -> String {
    format!("{}/{name}", server_url().trim_end_matches('/'))
}

/// A database that exists for one test and is dropped when this value is.
#[derive(Debug)]
pub struct TestDb {
    /// Its connection URL.
    pub url: String,
    name: String,
}

/// A stable name for the migrated template: it changes whenever a migration changes.
fn template_name() -> Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for d in entries {
        ctx.update(
            d.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        for f in ["up.sql", "down.sql"] {
            ctx.update(&std::fs::read(d.join(f)).unwrap_or_default());
        }
    }
    Ok(format!(
        "stratum_tmpl_{}",
        &hex::encode(ctx.finish().as_ref())[..16]
    ))
}

async fn admin() -> Result<AsyncPgConnection> {
    AsyncPgConnection::establish(&db_url("postgres"))
        .await
        .context("connecting to the test PostgreSQL (run `make db-up`)")
}

async fn ensure_template(admin: &mut AsyncPgConnection, name: &str) -> Result<()> {
    // Serializes template creation across test processes.
    diesel::sql_query("SELECT pg_advisory_lock(7465737401)")
        .execute(admin)
        .await?;
    let result = async {
        let exists: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            &format!("(SELECT count(*) FROM pg_database WHERE datname = '{name}')"),
        ))
        .get_result(admin)
        .await?;
        if exists == 0 {
            let building = format!("{name}_building");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .execute(admin)
                .await?;
            diesel::sql_query(format!("CREATE DATABASE {building}"))
                .execute(admin)
                .await?;
            stratum_postgres::run_migrations(&db_url(&building)).await?;
            // Renaming only once migrated means a half-built template is never cloned.
            diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
                .execute(admin)
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    diesel::sql_query("SELECT pg_advisory_unlock(7465737401)")
        .execute(admin)
        .await?;
    result
}

impl TestDb {
    /// Creates a fresh, fully migrated database.
    pub async fn new() -> Self {
        match Self::try_new().await {
            Ok(db) => db,
            Err(e) => panic!("cannot create a test database: {e:#}"),
        }
    }

    async fn try_new() -> Result<Self> {
        let template = template_name()?;
        let mut admin = admin().await?;
        ensure_template(&mut admin, &template).await?;
        let name = format!("stratum_t_{}", Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await?;
        Ok(Self {
            url: db_url(&name),
            name,
        })
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime; a thread of its own can block on one.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = admin().await {
                    let _dropped =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
            });
        });
        let _joined = handle.join();
    }
}
