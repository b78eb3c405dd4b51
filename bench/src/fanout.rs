//! One event to many webhooks (`fanout`), and the cost of one tenant create with its
//! change + audit + event + fan-out transaction (`tenant-create`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::harness::{
    connect, query_i64, round1, round3, summary, wait_count, BenchDb, CpuSnapshot, Percentiles,
    Server, ServerOpts,
};
use crate::receiver::Receiver;

/// Settings of the fan-out scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Webhooks subscribed to tenant.created (global, created through the API).
    #[arg(long, default_value_t = 1000)]
    pub webhooks: usize,
    /// Tenants created one after another; the first is the cold one.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// STRATUM_WORKER_CONCURRENCY (the server's default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (the server's default).
    #[arg(long, default_value_t = 8)]
    pub per_endpoint: u32,
    /// Webhook creations in flight at once during set-up.
    #[arg(long, default_value_t = 8)]
    pub setup_parallel: usize,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
}

/// Runs the fan-out scenario.
pub async fn run_fanout(a: FanoutArgs) -> Result<()> {
    let epoch = Instant::now();
    let rx = Receiver::start(a.receiver_threads, epoch, None)?;
    let db = BenchDb::create().await?;
    let opts = ServerOpts {
        concurrency: Some(a.concurrency),
        per_endpoint: Some(a.per_endpoint),
        no_worker: false,
        extra_env: Vec::new(),
    };
    let server = Server::start(&db, &opts).await?;
    let api = server.api()?;
    let n = a.webhooks.max(1);
    println!(
        "== fanout: one POST /tenants (tenant.created) fanned out to {n} webhooks, {} rounds",
        a.rounds
    );
    println!("  {}", opts.describe());
    let setup = Instant::now();
    api.create_webhooks(n, a.setup_parallel, &["tenant.created"], |i| {
        format!("{}/f{i}", rx.base)
    })
    .await?;
    println!(
        "  set-up: {n} webhooks created through the API in {:.2} s",
        setup.elapsed().as_secs_f64()
    );
    let sql = connect(&db.url).await?;
    let mut rounds = Vec::new();
    for round in 0..a.rounds.max(1) {
        let base = rx.stats.count();
        let cpu0 = CpuSnapshot::take(server.pid(), db.name());
        let t0 = Instant::now();
        api.create_tenant(&format!("fanout_{round}")).await?;
        let api_ms = t0.elapsed().as_secs_f64() * 1e3;
        let deadline = t0 + Duration::from_secs(120);
        while rx.stats.count() < base + n as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got = rx.stats.count() - base;
        if got < n as u64 {
            bail!("round {round}: only {got} of {n} deliveries arrived within 120 s");
        }
        // `last` is the newest receipt, which belongs to this round.
        let all_ms = rx
            .stats
            .last()
            .map(|l| l.saturating_duration_since(t0).as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN);
        let done = wait_count(
            &sql,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'success'",
            ((round + 1) * n) as i64,
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .await?;
        let recorded_ms = t0.elapsed().as_secs_f64() * 1e3;
        println!(
            "  round {} ({}): API call {:.1} ms (enqueue incl. INSERT…SELECT of {n} deliveries); all {n} received after {:.1} ms ({:.0} deliveries/s); all recorded as success by {:.0} ms{}",
            round + 1,
            if round == 0 { "cold" } else { "warm" },
            api_ms,
            all_ms,
            n as f64 / (all_ms / 1e3),
            recorded_ms,
            if done { "" } else { " (not all recorded within 60 s)" }
        );
        let cpu1 = CpuSnapshot::take(server.pid(), db.name());
        cpu0.report(&cpu1, t0.elapsed());
        rounds.push((api_ms, all_ms));
    }
    let fields = json!({
        "webhooks": n,
        "concurrency": a.concurrency,
        "api_ms": rounds.iter().map(|r| round3(r.0)).collect::<Vec<_>>(),
        "all_received_ms": rounds.iter().map(|r| round1(r.1)).collect::<Vec<_>>(),
    });
    drop(server);
    drop(db);
    summary("fanout", fields);
    Ok(())
}

/// Settings of the tenant-create scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct TenantCreateArgs {
    /// Global webhooks subscribed to tenant.created (each create fans out to all of them).
    #[arg(long, default_value_t = 100)]
    pub webhooks: usize,
    /// Tenant creates measured, one after another.
    #[arg(long, default_value_t = 500)]
    pub creates: usize,
    /// Creates made first and left out of the figures.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
}

/// Runs the tenant-create scenario against `serve --no-worker`.
pub async fn run_tenant_create(a: TenantCreateArgs) -> Result<()> {
    let epoch = Instant::now();
    // Deliveries are never sent (no worker); the receiver only gives the webhooks a target.
    let rx = Receiver::start(1, epoch, None)?;
    let db = BenchDb::create().await?;
    let opts = ServerOpts {
        concurrency: Some(64),
        per_endpoint: Some(8),
        no_worker: true,
        extra_env: Vec::new(),
    };
    let server = Server::start(&db, &opts).await?;
    let api = server.api()?;
    println!(
        "== tenant-create: {} sequential POST /tenants (+{} warm-up), each fanned out to {} webhooks; no worker, so this is the enqueue cost alone",
        a.creates, a.warmup, a.webhooks
    );
    println!("  {}", opts.describe());
    api.create_webhooks(a.webhooks, 8, &["tenant.created"], |i| {
        format!("{}/c{i}", rx.base)
    })
    .await?;
    let mut lat = Vec::with_capacity(a.creates);
    let cpu0 = CpuSnapshot::take(server.pid(), db.name());
    let t0 = Instant::now();
    let mut measured_from = t0;
    for i in 0..a.warmup + a.creates {
        if i == a.warmup {
            measured_from = Instant::now();
        }
        let start = Instant::now();
        api.create_tenant(&format!("tc_{i}")).await?;
        if i >= a.warmup {
            lat.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let wall = measured_from.elapsed();
    let cpu1 = CpuSnapshot::take(server.pid(), db.name());
    let sql = connect(&db.url).await?;
    let enqueued = query_i64(
        &sql,
        "SELECT count(*) FROM webhook_deliveries WHERE event_type = 'tenant.created'",
    )
    .await?;
    let Some(p) = Percentiles::of(lat) else {
        bail!("nothing measured");
    };
    println!("{}", p.line("POST /tenants (201)"));
    println!(
        "  {:.0} creates/s sequential; {enqueued} deliveries enqueued in total ({} expected)",
        a.creates as f64 / wall.as_secs_f64(),
        (a.creates + a.warmup) * a.webhooks
    );
    cpu0.report(&cpu1, t0.elapsed());
    let mut fields = p.json();
    if let Some(o) = fields.as_object_mut() {
        o.insert("webhooks".into(), json!(a.webhooks));
        o.insert(
            "creates_per_s".into(),
            json!(round1(a.creates as f64 / wall.as_secs_f64())),
        );
        o.insert("no_worker".into(), json!(true));
    }
    drop(server);
    drop(db);
    summary("tenant-create", fields);
    Ok(())
}
