//! Test helpers: a fresh PostgreSQL database per test, cloned from a template migrated once
//! per migration set, so database tests run in parallel (and across nextest's processes);
//! raw SQL helpers ([`sql`]) and rows written with SQL ([`fixtures`]).

use std::path::Path;

use anyhow::{Context, Result};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

pub mod cutter;
pub mod fixtures;
pub mod sql;

/// The server the tests use: `STRATUM_TEST_DATABASE_URL`, by default this checkout's test
/// cluster (`make db-test-up`, 127.0.0.1:25433).
pub fn server_url() -> String {
    std::env::var("STRATUM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25433".to_owned())
}

/// The workspace root, with symlinks resolved (as `scripts/pg.sh` sees it with `pwd -P`).
fn workspace_root() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// The name prefix of this checkout's test databases: `STRATUM_TEST_DB_PREFIX`, by default
/// `stratum_t_<first 8 hex digits of SHA-256(checkout path)>_`, the same that
/// `scripts/pg.sh prefix` prints. `make test` drops leftovers with this prefix only, so two
/// checkouts sharing a server never drop each other's databases.
pub fn db_prefix() -> String {
    if let Ok(prefix) = std::env::var("STRATUM_TEST_DB_PREFIX") {
        return prefix;
    }
    default_db_prefix(&workspace_root())
}

fn default_db_prefix(root: &Path) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, root.as_os_str().as_encoded_bytes());
    format!("stratum_t_{}_", &hex::encode(digest.as_ref())[..8])
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
        .with_context(|| {
            format!(
                "connecting to the test PostgreSQL at {} (run `make db-test-up`)",
                server_url()
            )
        })
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
        let name = format!("{}{}", db_prefix(), Uuid::new_v4().simple());
        if !valid_db_name(&name) {
            anyhow::bail!(
                "test database name {name:?} is not a plain PostgreSQL identifier of at most 63 \
                 bytes (check STRATUM_TEST_DB_PREFIX)"
            );
        }
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

/// Lower-case letters, digits and `_`, starting with a letter, at most 63 bytes: a name that
/// needs no quoting in the statements above.
fn valid_db_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_is_the_one_pg_sh_prints() {
        // `printf '%s' /work/checkout | sha256sum | cut -c1-8`
        assert_eq!(
            default_db_prefix(Path::new("/work/checkout")),
            "stratum_t_b0413587_"
        );
    }

    #[test]
    fn default_prefix_matches_scripts_pg_sh() {
        let script = workspace_root().join("scripts/pg.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("prefix")
            .env_remove("STRATUM_TEST_DB_PREFIX")
            .output()
            .expect("running scripts/pg.sh prefix");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            default_db_prefix(&workspace_root())
        );
    }

    #[test]
    fn checkouts_get_different_prefixes() {
        assert_ne!(
            default_db_prefix(Path::new("/work/a")),
            default_db_prefix(Path::new("/work/b"))
        );
    }

    #[test]
    fn database_names_are_plain_identifiers() {
        assert!(valid_db_name(
            "stratum_t_813cf0e7_0123456789abcdef0123456789abcdef"
        ));
        assert!(!valid_db_name("stratum-t"));
        assert!(!valid_db_name("Stratum"));
        assert!(!valid_db_name(&"a".repeat(64)));
    }
}
