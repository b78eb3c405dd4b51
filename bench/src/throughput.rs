//! End-to-end deliveries per second: a backlog enqueued with SQL, drained by one
//! `stratum serve` into a receiver that answers 200 at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::harness::{
    connect, query_f64, query_i64, round1, round3, rss_kib, summary, unix_now, xact_commits,
    BenchDb, CpuSnapshot, Server, ServerOpts,
};
use crate::receiver::Receiver;

/// Settings of the throughput scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Deliveries to enqueue (rounded up to a multiple of --webhooks).
    #[arg(long, default_value_t = 20_000)]
    pub deliveries: u64,
    /// Webhooks subscribed to tenant.updated; every event fans out to all of them.
    #[arg(long, default_value_t = 4)]
    pub webhooks: usize,
    /// STRATUM_WORKER_CONCURRENCY.
    #[arg(long, default_value_t = 256)]
    pub concurrency: u32,
    /// STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT.
    #[arg(long, default_value_t = 256)]
    pub per_endpoint: u32,
    /// STRATUM_DB_POOL_SIZE (unset: the server's default).
    #[arg(long)]
    pub db_pool_size: Option<u32>,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// Runs it.
pub async fn run(a: Args) -> Result<()> {
    let epoch = Instant::now();
    let rx = Receiver::start(a.receiver_threads, epoch, None)?;
    let db = BenchDb::create().await?;
    let mut extra_env = Vec::new();
    if let Some(p) = a.db_pool_size {
        extra_env.push(("STRATUM_DB_POOL_SIZE".to_owned(), p.to_string()));
    }
    let opts = ServerOpts {
        concurrency: Some(a.concurrency),
        per_endpoint: Some(a.per_endpoint),
        no_worker: false,
        extra_env,
    };
    let server = Server::start(&db, &opts).await?;
    let api = server.api()?;
    let webhooks = a.webhooks.max(1);
    let events = a.deliveries.div_ceil(webhooks as u64).max(1);
    let total = events * webhooks as u64;
    println!("== throughput: {total} deliveries ({events} events x {webhooks} webhooks), receiver answers 200 at once");
    println!("  {}", opts.describe());
    api.create_webhooks(webhooks, 4, &["tenant.updated"], |i| {
        format!("{}/t{i}", rx.base)
    })
    .await?;

    let sql = connect(&db.url).await?;
    // Let start-up allocations settle before calling the process idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = rss_kib(server.pid()).unwrap_or((0, 0));

    // Sample RSS every 100 ms from here to the end.
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (Arc::clone(&peak), Arc::clone(&done), server.pid());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !done.load(Ordering::Acquire) {
                tick.tick().await;
                if let Some((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::AcqRel);
                }
            }
        })
    };

    let commits0 = xact_commits(&sql).await?;
    let cpu0 = CpuSnapshot::take(server.pid(), db.name());
    let enqueue_start = Instant::now();
    // One transaction: the NOTIFY goes out when the rows become visible.
    sql.batch_execute(&format!(
        "BEGIN;
         WITH ev AS (
             INSERT INTO webhook_events (id, event_type, tenant_id, payload)
             SELECT stratum_uuid_v7(), 'tenant.updated', NULL,
                    jsonb_build_object('id', gen_random_uuid(), 'name', 'Bench tenant', 'slug', 'bench_' || g, 'n', g)
               FROM generate_series(1, {events}) g
             RETURNING id
         )
         INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
         SELECT stratum_uuid_v7(), w.id, ev.id, 'tenant.updated'
           FROM ev CROSS JOIN webhooks w
          WHERE w.active AND w.events @> ARRAY['tenant.updated'];
         NOTIFY stratum_deliveries;
         COMMIT;"
    ))
    .await?;
    let t0 = Instant::now();
    let t0_unix = unix_now();
    let enqueue = t0 - enqueue_start;

    let deadline = t0 + Duration::from_secs(a.timeout_secs);
    let mut finished = 0;
    let mut failed = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = sql
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'success'),
                        count(*) FILTER (WHERE status = 'failed')
                   FROM webhook_deliveries",
                &[],
            )
            .await?;
        finished = row.try_get::<_, i64>(0)?;
        failed = row.try_get::<_, i64>(1)?;
        if (finished + failed) as u64 >= total {
            break;
        }
    }
    let detected = t0.elapsed();
    let cpu1 = CpuSnapshot::take(server.pid(), db.name());
    done.store(true, Ordering::Release);
    let _ = sampler.await;
    let (_, hwm) = rss_kib(server.pid()).unwrap_or((0, 0));
    let peak_rss = peak.load(Ordering::Acquire);

    if ((finished + failed) as u64) < total {
        bail!(
            "only {finished} of {total} deliveries succeeded ({failed} failed) within {} s",
            a.timeout_secs
        );
    }
    let last_completed = query_f64(
        &sql,
        "SELECT extract(epoch FROM max(completed_at))::float8 FROM webhook_deliveries",
    )
    .await?
    .unwrap_or(t0_unix);
    let attempts = query_i64(&sql, "SELECT count(*) FROM webhook_delivery_attempts").await?;
    // Counters are published about once a second; the run's own polls add ~10 per second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits = xact_commits(&sql).await? - commits0;
    let db_secs = (last_completed - t0_unix).max(1e-6);
    let received = rx.stats.count();
    let first = rx
        .stats
        .first()
        .map(|f| f.saturating_duration_since(t0).as_secs_f64());
    let last = rx
        .stats
        .last()
        .map(|l| l.saturating_duration_since(t0).as_secs_f64())
        .unwrap_or(f64::NAN);
    let window = match (rx.stats.first(), rx.stats.last()) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => f64::NAN,
    };
    let received_per_s = received as f64 / last;
    let completed_per_s = finished as f64 / db_secs;

    println!(
        "  enqueue (INSERT … SELECT of {total} rows + NOTIFY, one tx): {:.0} ms",
        enqueue.as_secs_f64() * 1e3
    );
    println!(
        "  first receipt after commit: {}",
        first.map_or("none".to_owned(), |f| format!("{:.1} ms", f * 1e3))
    );
    println!(
        "  received: {received} requests; last receipt {last:.3} s after commit -> {received_per_s:.0} deliveries/s (receiver window first->last {window:.3} s: {:.0}/s)",
        received as f64 / window
    );
    println!(
        "  completed in DB: {finished} success, {failed} failed, {attempts} attempts recorded; last completed_at {db_secs:.3} s after commit -> {completed_per_s:.0} deliveries/s (poll saw it at {:.2} s)",
        detected.as_secs_f64()
    );
    println!(
        "  stratum RSS: idle {:.1} MiB, peak sampled every 100 ms {:.1} MiB (VmHWM {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  PostgreSQL transactions committed in the database during the run: {commits} ({:.3} per delivery; claims + completion batches + this benchmark's polls)",
        commits as f64 / total as f64
    );
    let cpu = cpu0.report(&cpu1, detected);
    let mut fields = json!({
        "deliveries": total,
        "webhooks": webhooks,
        "concurrency": a.concurrency,
        "per_endpoint": a.per_endpoint,
        "received_per_s": round1(received_per_s),
        "completed_per_s": round1(completed_per_s),
        "seconds_to_last_success": round3(db_secs),
        "received": received,
        "db_commits_per_delivery": round3(commits as f64 / total as f64),
        "failed": failed,
        "rss_idle_mib": round1(idle_rss as f64 / 1024.0),
        "rss_peak_mib": round1(peak_rss as f64 / 1024.0),
        "rss_hwm_mib": round1(hwm as f64 / 1024.0),
    });
    if let (Some(o), Some(c)) = (fields.as_object_mut(), cpu.as_object()) {
        o.extend(c.clone());
    }
    drop(server);
    drop(db);
    summary("throughput", fields);
    Ok(())
}
