//! `stratum`: the control plane's one binary.

mod config;
mod telemetry;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::{DbArgs, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "stratum",
    version,
    about = "Webhook, audit and consent control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API (and run the delivery worker).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(db) => migrate(&db).await,
        }
    })
}

async fn migrate(db: &DbArgs) -> Result<()> {
    let n = stratum_postgres::run_migrations(&db.database_url)
        .await
        .context("migrating")?;
    tracing::info!(applied = n, "migrations current");
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let _keyring = stratum_crypto::Keyring::from_env_values(
        &args.encryption_key,
        args.encryption_key_previous.as_deref(),
    )
    .context("STRATUM_ENCRYPTION_KEY")?;
    migrate(&args.db).await?;
    let pool = stratum_postgres::connect(
        &args.db.database_url,
        &stratum_postgres::PoolConfig {
            max_size: args.db.db_pool_size,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let state = actix_web::web::Data::new(stratum_api::AppState { pool });
    let server = actix_web::HttpServer::new(move || stratum_api::app(state.clone()))
        .bind(args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .shutdown_timeout(30)
        .run();
    tracing::info!(bind = %args.bind, "stratum serving");
    server.await?;
    Ok(())
}
