//! `stratum`: the control plane's one binary.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stratum_core::Caller;
use stratum_crypto::{Keyring, SharedKeyring};
use uuid::Uuid;

use stratum_server::config::{DbArgs, KeyArgs, SealArgs, ServeArgs, WebhookArgs, WorkerArgs};
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
    telemetry::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Worker(args) => worker(args).await,
            Command::Migrate(db) => migrate(&db).await,
            Command::ApiKey(ApiKeyCommand::Create(args)) => create_key(args).await,
            Command::Openapi => {
                println!("{}", stratum_api::openapi::pretty_json()?);
                Ok(())
            }
            Command::Audit(AuditCommand::Verify(args)) => verify_file(&args.file),
        }
    })
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

/// Starts the audit sealer unless sealing is off; returns its stop switch. It has a
/// connection of its own: under load every pooled connection is serving requests, and a
/// sealer queueing behind them would let the sealing lag grow with the load.
fn spawn_sealer(db: &DbArgs, cfg: &SealArgs) -> Result<Option<tokio::sync::watch::Sender<bool>>> {
    let Some(interval) = cfg.interval() else {
        return Ok(None);
    };
    let pool = stratum_postgres::connect(
        &db.database_url,
        &stratum_postgres::PoolConfig {
            max_size: 1,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(stratum_postgres::run_sealer(pool, interval, stopped));
    Ok(Some(stop))
}

/// Creates this week's partitions and the coming ones now (so rows land in weekly
/// partitions from the first write), then keeps creating them hourly; returns the keeper's
/// stop switch.
async fn keep_partitions(
    pool: &stratum_postgres::Pool,
) -> Result<tokio::sync::watch::Sender<bool>> {
    stratum_postgres::create_partitions_ahead(pool)
        .await
        .map_err(anyhow::Error::msg)
        .context("creating the coming weeks' partitions")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(stratum_postgres::run_partition_keeper(
        pool.clone(),
        stratum_postgres::partitions::KEEPER_INTERVAL,
        stopped,
    ));
    Ok(stop)
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

fn keyring(keys: &KeyArgs) -> Result<Keyring> {
    Keyring::from_env(
        &keys.encryption_key,
        keys.encryption_key_previous
            .as_deref()
            .into_iter()
            .chain(keys.encryption_key_next.as_deref()),
    )
    .context("STRATUM_ENCRYPTION_KEY")
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

/// Starts the delivery worker and its LISTEN task; returns a handle that stops both.
fn spawn_worker(
    database_url: &str,
    pool: stratum_postgres::Pool,
    keyring: SharedKeyring,
    cfg: &WebhookArgs,
    out: &wiring::Outbound,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
    stratum_webhooks::Dispatcher,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(stratum_postgres::listen_for_deliveries(
        database_url.to_owned(),
        wake.clone(),
        stopped.clone(),
    ));
    let replayer = wiring::replayer(pool.clone(), cfg);
    let replay_stop = stopped.clone();
    let replaying = tokio::spawn(async move { replayer.run(replay_stop).await });
    let dispatcher = wiring::dispatcher(pool, keyring, cfg, out);
    let running = dispatcher.clone();
    let handle = tokio::spawn(async move {
        running.run(stopped, wake).await;
        let _ = replaying.await;
    });
    (stop, handle, dispatcher)
}

/// Refreshes the queue gauges every few seconds, so scrapes stay cheap.
fn spawn_queue_gauges(
    pool: stratum_postgres::Pool,
    metrics: std::sync::Arc<stratum_api::metrics::Metrics>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Ok(q) = stratum_postgres::queue_snapshot(&pool).await {
                let g = &metrics.queue;
                g.pending.store(q.pending, Relaxed);
                g.due.store(q.due, Relaxed);
                g.oldest_due_age_seconds
                    .store(q.oldest_due_age_seconds, Relaxed);
                g.dead_letter.store(q.failed, Relaxed);
                g.inactive_webhooks.store(q.inactive_webhooks, Relaxed);
                g.open_breakers.store(q.open_breakers, Relaxed);
                g.refreshed_at.store(time_now(), Relaxed);
            }
        }
    });
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Refuses to start when the configured keys cannot read the stored secrets; then
/// encrypts with the database's active key when this process holds it.
async fn check_keys(pool: &stratum_postgres::Pool, keyring: &SharedKeyring) -> Result<()> {
    let ring = keyring.get();
    let maintenance = wiring::maintenance(pool.clone(), keyring.clone(), Default::default());
    maintenance
        .check_keys(&ring)
        .await
        .map_err(anyhow::Error::msg)
        .context("refusing to start: the start-up encryption key check failed")?;
    maintenance
        .init_active_key()
        .await
        .map_err(anyhow::Error::msg)
        .context("refusing to start: the active encryption key cannot be read")?;
    Ok(())
}

/// Exposes a running dispatcher on `metrics`: its counters and histograms today. The one
/// place, for `serve` and `worker` alike, to register more of the dispatcher's figures
/// (per-webhook in flight and concurrency limits, batch sizes, queue age) as another
/// `metrics.register_collector(...)` line.
fn expose_dispatcher(
    metrics: &stratum_api::metrics::Metrics,
    dispatcher: &stratum_webhooks::Dispatcher,
) {
    metrics.attach_dispatcher(dispatcher.stats());
    if let Some(b) = dispatcher.stats().breakers.get() {
        metrics.attach_breakers(std::sync::Arc::clone(b));
    }
    let d = dispatcher.clone();
    metrics.attach_dispatcher_snapshot(std::sync::Arc::new(move || d.snapshot()));
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let keyring = SharedKeyring::new(keyring(&args.keys)?);
    migrate(&args.db).await?;
    let pool = pool(&args.db)?;
    check_keys(&pool, &keyring).await?;
    let partitions = keep_partitions(&pool).await?;
    let out = wiring::outbound(&args.webhook)?;
    // The operations port comes up before any delivery, so a port already taken stops
    // the worker before it claims anything.
    let metrics = std::sync::Arc::new(stratum_api::metrics::Metrics::new());
    let ops_state = actix_web::web::Data::new(stratum_server::ops::OpsState {
        storage: std::sync::Arc::new(stratum_postgres::PgStorageProbe::new(pool.clone())),
        metrics: metrics.clone(),
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
    let sealer = spawn_sealer(&args.db, &args.seal)?;
    let (stop, handle, dispatcher) = spawn_worker(
        &args.db.database_url,
        pool.clone(),
        keyring,
        &args.webhook,
        &out,
    );
    expose_dispatcher(&metrics, &dispatcher);
    spawn_queue_gauges(pool, metrics);
    tracing::info!(
        sealing = sealer.is_some(),
        bind = %args.worker_bind,
        "stratum worker running"
    );
    terminated().await;
    tracing::info!("stopping: no new claims, finishing deliveries in flight");
    let _ = stop.send(true);
    handle.await?;
    if let Some(s) = sealer {
        let _ = s.send(true);
    }
    let _ = partitions.send(true);
    ops_handle.stop(true).await;
    ops_task.await??;
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let keyring = SharedKeyring::new(keyring(&args.keys)?);
    if let Some(k) = &args.admin_api_key {
        if k.len() < stratum_tenancy::MIN_BOOTSTRAP_KEY_LEN {
            bail!("STRATUM_ADMIN_API_KEY must be at least 32 characters");
        }
    }
    migrate(&args.db).await?;
    let pool = pool(&args.db)?;
    check_keys(&pool, &keyring).await?;
    let partitions = keep_partitions(&pool).await?;
    let out = wiring::outbound(&args.webhook)?;
    let worker = (!args.no_worker).then(|| {
        spawn_worker(
            &args.db.database_url,
            pool.clone(),
            keyring.clone(),
            &args.webhook,
            &out,
        )
    });
    let mut state = wiring::app_state(
        pool.clone(),
        keyring.clone(),
        args.admin_api_key.as_deref(),
        out,
    );
    state.maintenance = wiring::maintenance(pool.clone(), keyring, args.retention.config());
    state.rate_limiter =
        stratum_api::ratelimit::RateLimiter::new(stratum_api::ratelimit::RateLimitConfig {
            per_second: args.rate_limit_per_second,
            burst: args.rate_limit_burst,
            limit_bootstrap: args.rate_limit_bootstrap,
        })
        .map(std::sync::Arc::new);
    state.body_timeout = std::time::Duration::from_millis(args.request_body_timeout_ms);
    state.auth_failures = (args.auth_failures_per_minute > 0)
        .then(|| {
            stratum_api::ratelimit::RateLimiter::new(stratum_api::ratelimit::RateLimitConfig {
                per_second: f64::from(args.auth_failures_per_minute) / 60.0,
                burst: f64::from(args.auth_failures_per_minute),
                limit_bootstrap: true,
            })
        })
        .flatten()
        .map(std::sync::Arc::new);
    if let Some((_, _, dispatcher)) = &worker {
        expose_dispatcher(&state.metrics, dispatcher);
    }
    let sealer = spawn_sealer(&args.db, &args.seal)?;
    spawn_queue_gauges(pool, state.metrics.clone());
    let state = actix_web::web::Data::new(state);
    let server = actix_web::HttpServer::new(move || stratum_api::app(state.clone()))
        .bind(args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .shutdown_timeout(30)
        .disable_signals()
        .run();
    let handle = server.handle();
    tracing::info!(bind = %args.bind, worker = worker.is_some(), "stratum serving");
    let server_task = tokio::spawn(server);
    terminated().await;
    tracing::info!("stopping: draining requests and deliveries in flight");
    let stopping = handle.stop(true);
    if let Some((stop, handle, _)) = worker {
        let _ = stop.send(true);
        handle.await?;
    }
    stopping.await;
    if let Some(s) = sealer {
        let _ = s.send(true);
    }
    let _ = partitions.send(true);
    server_task.await??;
    Ok(())
}
