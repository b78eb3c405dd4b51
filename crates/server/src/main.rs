//! `stratum`: the control plane's one binary.

mod config;
mod telemetry;
mod wiring;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stratum_core::Caller;
use stratum_crypto::{Keyring, SharedKeyring};
use uuid::Uuid;

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
    /// Manage API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Mint a key and print it once.
    Create(CreateKeyArgs),
}

#[derive(Debug, Args)]
struct CreateKeyArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Bind the key to this tenant (and its descendants).
    #[arg(long)]
    tenant: Option<Uuid>,
    /// Comma-separated scopes: read, write, admin.
    #[arg(long, default_value = "read", value_delimiter = ',')]
    scopes: Vec<String>,
    /// A label.
    #[arg(long)]
    name: Option<String>,
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
            Command::ApiKey(ApiKeyCommand::Create(args)) => create_key(args).await,
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

fn pool(db: &DbArgs) -> Result<stratum_postgres::Pool> {
    stratum_postgres::connect(
        &db.database_url,
        &stratum_postgres::PoolConfig {
            max_size: db.db_pool_size,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)
}

async fn create_key(args: CreateKeyArgs) -> Result<()> {
    let pool = pool(&args.db)?;
    // Minting a key touches no encrypted data: any well-formed key will do here.
    let keyring = SharedKeyring::new(Keyring::from_env_values(&"k".repeat(32), None)?);
    let state = wiring::app_state(pool, keyring, None);
    let minted = state
        .api_keys
        .create(&Caller::system(), args.tenant, args.name, Some(args.scopes))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", minted.plaintext);
    eprintln!(
        "api key {} created (scopes: {}); it is shown only this once",
        minted.key.id,
        minted
            .key
            .scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let keyring = Keyring::from_env_values(
        &args.encryption_key,
        args.encryption_key_previous.as_deref(),
    )
    .context("STRATUM_ENCRYPTION_KEY")?;
    if let Some(k) = &args.admin_api_key {
        if k.len() < stratum_tenancy::MIN_BOOTSTRAP_KEY_LEN {
            bail!("STRATUM_ADMIN_API_KEY must be at least 32 characters");
        }
    }
    migrate(&args.db).await?;
    let pool = pool(&args.db)?;
    let state = actix_web::web::Data::new(wiring::app_state(
        pool,
        SharedKeyring::new(keyring),
        args.admin_api_key.as_deref(),
    ));
    let server = actix_web::HttpServer::new(move || stratum_api::app(state.clone()))
        .bind(args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .shutdown_timeout(30)
        .run();
    tracing::info!(bind = %args.bind, "stratum serving");
    server.await?;
    Ok(())
}
