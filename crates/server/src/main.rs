//! `stratum`: the control plane's one binary.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stratum_core::Caller;
use uuid::Uuid;

use stratum_server::config::{DbArgs, ServeArgs, WorkerArgs};
use stratum_server::wiring::Process;
use stratum_server::{telemetry, wiring};

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
    /// Run the delivery worker only.
    Worker(WorkerArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Manage API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyCommand),
    /// Print the OpenAPI 3.1 document of the REST API (JSON) and exit.
    Openapi,
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of a global NDJSON export (`GET /audit-logs/export`) offline,
    /// without the database; prints the report and exits 1 when the chain is broken.
    Verify(VerifyFileArgs),
}

#[derive(Debug, Args)]
struct VerifyFileArgs {
    /// The export, one entry a line.
    #[arg(long)]
    file: std::path::PathBuf,
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

/// jemalloc instead of the C library's allocator: glibc's malloc and free (with their
/// chunk consolidation and arena locks) were about a fifth of a delivery worker's CPU in
/// `perf`; with jemalloc the server spends about 12 % less CPU per delivery in the engine
/// benchmark (rows a and g), for 3–4 MiB more resident memory.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Audit(AuditCommand::Verify(args)) = &cli.command {
        // Offline: no runtime, no database, no logging set-up to get in the way of stdout.
        return verify_file(&args.file);
    }
    let telemetry = telemetry::init()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Worker(args) => worker(args).await,
            Command::Migrate(db) => wiring::migrate(&db).await,
            Command::ApiKey(ApiKeyCommand::Create(args)) => create_key(args).await,
            Command::Openapi => {
                println!("{}", stratum_api::openapi::pretty_json()?);
                Ok(())
            }
            Command::Audit(AuditCommand::Verify(args)) => verify_file(&args.file),
        }
    });
    drop(rt);
    telemetry.shutdown();
    outcome
}

fn verify_file(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let report = stratum_audit::chain::verify_ndjson(std::io::BufReader::new(file))
        .with_context(|| format!("reading {}", path.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn create_key(args: CreateKeyArgs) -> Result<()> {
    let pool = wiring::pool(&args.db)?;
    let api_keys = wiring::api_keys(pool);
    let minted = api_keys
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

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let mut process = Process::prepare(&args.db, &args.keys, &args.webhook).await?;
    // The operations port comes up before any delivery, so a port already taken stops
    // the worker before it claims anything.
    let ops_state = actix_web::web::Data::new(stratum_server::ops::OpsState {
        storage: std::sync::Arc::new(stratum_postgres::PgStorageProbe::new(process.pool.clone())),
        metrics: process.metrics.clone(),
    });
    let ops = actix_web::HttpServer::new(move || stratum_server::ops::ops_app(ops_state.clone()))
        .workers(1)
        .bind(args.worker_bind)
        .with_context(|| format!("binding STRATUM_WORKER_BIND {}", args.worker_bind))?
        .shutdown_timeout(5)
        .disable_signals()
        .run();
    let ops_handle = ops.handle();
    let ops_task = tokio::spawn(ops);
    process.start_work(&args.db, &args.seal, &args.webhook, true)?;
    tracing::info!(
        sealing = args.seal.interval().is_some(),
        bind = %args.worker_bind,
        tasks = ?process.background.names(),
        "stratum worker running"
    );
    terminated().await;
    tracing::info!("stopping: no new claims, finishing deliveries in flight");
    process.background.stop().await?;
    ops_handle.stop(true).await;
    ops_task.await??;
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    if let Some(k) = &args.admin_api_key {
        if k.len() < stratum_tenancy::MIN_BOOTSTRAP_KEY_LEN {
            bail!("STRATUM_ADMIN_API_KEY must be at least 32 characters");
        }
    }
    let mut process = Process::prepare(&args.db, &args.keys, &args.webhook).await?;
    let state = actix_web::web::Data::new(wiring::app_state(
        process.pool.clone(),
        process.keyring.clone(),
        process.outbound.clone(),
        process.metrics.clone(),
        wiring::ApiSettings::from_args(&args),
    ));
    let server = actix_web::HttpServer::new(move || stratum_api::app(state.clone()))
        .bind(args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .shutdown_timeout(30)
        .disable_signals()
        .run();
    let handle = server.handle();
    process.start_work(&args.db, &args.seal, &args.webhook, !args.no_worker)?;
    tracing::info!(
        bind = %args.bind,
        worker = !args.no_worker,
        tasks = ?process.background.names(),
        "stratum serving"
    );
    let server_task = tokio::spawn(server);
    terminated().await;
    tracing::info!("stopping: draining requests and deliveries in flight");
    let stopping = handle.stop(true);
    process.background.stop().await?;
    stopping.await;
    server_task.await??;
    Ok(())
}
