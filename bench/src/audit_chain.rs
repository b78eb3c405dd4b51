//! The cost of the tamper-evident audit chain: API write rate with sealing on vs off, and
//! the sealing lag (commit -> sealed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::harness::{
    connect, http_client, round1, round3, rss_kib, summary, Api, BenchDb, CpuSnapshot, Percentiles,
    Server, ServerOpts, ADMIN,
};

/// Flags of the `audit-chain` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditChainArgs {
    /// Seconds of writes per measured round.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Concurrent API clients writing.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Rounds per mode, alternating off/on so that drift hits both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Lag probes (one write, then poll until sealed) during the lag phase.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// `STRATUM_AUDIT_SEAL_INTERVAL_MS` when sealing is on.
    #[arg(long, default_value_t = 200)]
    pub seal_interval_ms: u64,
    /// Entries in the export phase (written with SQL, sealed by the server, then streamed
    /// through `GET /audit-logs/export` while the server's RSS is sampled); 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    pub export_entries: u64,
}

fn opts(seal_interval_ms: u64) -> ServerOpts {
    ServerOpts {
        concurrency: Some(64),
        per_endpoint: Some(8),
        no_worker: true,
        extra_env: vec![
            (
                "STRATUM_AUDIT_SEAL_INTERVAL_MS".to_owned(),
                seal_interval_ms.to_string(),
            ),
            ("STRATUM_RATE_LIMIT_PER_SECOND".to_owned(), "0".to_owned()),
        ],
    }
}

/// `clients` loops of `PUT /tenants/{t}/config/k<n>` until `stop`; returns writes done.
fn spawn_writers(
    api: &Api,
    tenant: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    (0..clients)
        .map(|c| {
            let api = api.clone();
            let path = format!("/tenants/{tenant}/config/k{c}");
            let stop = stop.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"value": {"n": n, "ratio": 0.5}});
                    let (status, v) = api.call(reqwest::Method::PUT, &path, Some(&body)).await?;
                    if status != 200 {
                        bail!("PUT {path} answered {status}: {v}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect()
}

/// Writes per second over one round against a fresh server and database, and the CPU
/// time (the server and its PostgreSQL backends, sealer included) per write in ms: on a
/// shared machine the second is far steadier than the first.
async fn write_rate(a: &AuditChainArgs, seal_interval_ms: u64) -> Result<(f64, f64)> {
    let db = BenchDb::create().await?;
    let server = Server::start(&db, &opts(seal_interval_ms)).await?;
    let api = server.api()?;
    let tenant = api.create_tenant("chain").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Warm-up: connections, plans, the first pages of the indexes.
    let warm = spawn_writers(&api, &tenant, a.clients, stop.clone(), done.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = done.load(Ordering::Relaxed);
    let cpu0 = CpuSnapshot::take(server.pid(), db.name());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.duration_secs)).await;
    let after = done.load(Ordering::Relaxed);
    let cpu1 = CpuSnapshot::take(server.pid(), db.name());
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in warm {
        w.await??;
    }
    let writes = (after - before).max(1) as f64;
    let cpu = (cpu1.stratum - cpu0.stratum) + (cpu1.postgres - cpu0.postgres);
    Ok(((after - before) as f64 / wall, cpu * 1000.0 / writes))
}

/// Commit -> sealed, in ms, for `probes` writes made beside `clients / 2` busy writers.
async fn sealing_lag(a: &AuditChainArgs) -> Result<(Percentiles, u64)> {
    let db = BenchDb::create().await?;
    let server = Server::start(&db, &opts(a.seal_interval_ms)).await?;
    let api = server.api()?;
    let tenant = api.create_tenant("lag").await?;
    let pg = connect(&db.url).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(
        &api,
        &tenant,
        (a.clients / 2).max(1),
        stop.clone(),
        done.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unsealed = pg
        .prepare("SELECT count(*) FROM audit_logs WHERE seq IS NULL AND resource_id = $1")
        .await?;
    let mut lags = Vec::with_capacity(a.probes);
    for i in 0..a.probes {
        let key = format!("probe{i}");
        let (status, v) = api
            .call(
                reqwest::Method::PUT,
                &format!("/tenants/{tenant}/config/{key}"),
                Some(&json!({"value": i})),
            )
            .await?;
        if status != 200 {
            bail!("probe answered {status}: {v}");
        }
        // The response comes after the commit: from here until the entry is sealed.
        let committed = Instant::now();
        let resource = format!("{tenant}/{key}");
        loop {
            let n: i64 = pg.query_one(&unsealed, &[&resource]).await?.get(0);
            if n == 0 {
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                lags.push(f64::INFINITY);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if lags.len() == i {
            lags.push(committed.elapsed().as_secs_f64() * 1000.0);
        }
        // Spread the probes over the sealing interval.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let background = done.load(Ordering::Relaxed);
    Percentiles::of(lags)
        .map(|p| (p, background))
        .ok_or_else(|| anyhow::anyhow!("no probes"))
}

/// What the export phase measured.
struct ExportFigures {
    lines: u64,
    secs: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
}

/// Streams a global export of `entries` sealed entries, sampling the server's RSS.
async fn export_rss(a: &AuditChainArgs) -> Result<ExportFigures> {
    let db = BenchDb::create().await?;
    let server = Server::start(&db, &opts(a.seal_interval_ms)).await?;
    let pg = connect(&db.url).await?;
    // Chunks of 50,000: each transaction stays short.
    let mut left = a.export_entries;
    while left > 0 {
        let n = left.min(50_000);
        pg.batch_execute(&format!(
            "SELECT stratum_record(stratum_uuid_v7(), NULL, 'system', 'system', 'bench.export', 'bench',
                                   g::text, NULL, jsonb_build_object('n', g, 'note', repeat('x', 200)),
                                   '{{}}', NULL, NULL, NULL, NULL, NULL)
               FROM generate_series(1, {n}) g"
        ))
        .await?;
        left -= n;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let row = pg
            .query_one("SELECT count(*) FROM audit_logs WHERE seq IS NULL", &[])
            .await?;
        if row.get::<_, i64>(0) == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("entries still unsealed after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = server.pid();
    let rss = move || rss_kib(pid).map_or(0.0, |(now, _)| now as f64 / 1024.0);
    let rss_before_mib = rss();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let peak = peak.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max((rss() * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut res = http_client()?
        .get(format!("{}/api/v1/audit-logs/export", server.base))
        .header("X-API-Key", ADMIN)
        .timeout(Duration::from_secs(3600))
        .send()
        .await?;
    let mut lines = 0u64;
    while let Some(chunk) = res.chunk().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    Ok(ExportFigures {
        lines,
        secs,
        rss_before_mib,
        rss_peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
    })
}

/// Runs the scenario.
pub async fn run(a: AuditChainArgs) -> Result<()> {
    println!(
        "== audit-chain: {} clients of PUT /tenants/:id/config/:key for {} s per round, {} rounds per mode (sealing off = STRATUM_AUDIT_SEAL_INTERVAL_MS=0, on = {}); then {} lag probes",
        a.clients, a.duration_secs, a.rounds, a.seal_interval_ms, a.probes
    );
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut cpu_off = Vec::new();
    let mut cpu_on = Vec::new();
    for r in 0..a.rounds {
        // Alternate which mode goes first, so warming of the machine evens out.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for sealing in order {
            let interval = if sealing { a.seal_interval_ms } else { 0 };
            let (rate, cpu) = write_rate(&a, interval).await?;
            println!(
                "  round {} sealing {:<3}  {:>8.1} writes/s  {:.3} ms CPU per write (server + its postgres backends)",
                r + 1,
                if sealing { "on" } else { "off" },
                rate,
                cpu
            );
            if sealing {
                on.push(rate);
                cpu_on.push(cpu);
            } else {
                off.push(rate);
                cpu_off.push(cpu);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (off_rate, on_rate) = (mean(&off), mean(&on));
    let slower = if off_rate > 0.0 {
        (1.0 - on_rate / off_rate) * 100.0
    } else {
        0.0
    };
    println!("  write rate, sealing off          {off_rate:>8.1} writes/s (mean)");
    println!("  write rate, sealing on           {on_rate:>8.1} writes/s (mean)  ({slower:+.1} % slower)");
    let (cpu_off, cpu_on) = (mean(&cpu_off), mean(&cpu_on));
    let cpu_more = if cpu_off > 0.0 {
        (cpu_on / cpu_off - 1.0) * 100.0
    } else {
        0.0
    };
    println!(
        "  CPU per write, sealing off / on  {cpu_off:.3} / {cpu_on:.3} ms  ({cpu_more:+.1} %)"
    );
    let (lag, background) = sealing_lag(&a).await?;
    println!("{}", lag.line("sealing lag (commit -> sealed)"));
    println!("  (beside {background} background writes)");
    let mut fields = json!({
        "write_rate_off_per_s": round1(off_rate),
        "write_rate_on_per_s": round1(on_rate),
        "slower_pct": round1(slower),
        "cpu_ms_per_write_off": round3(cpu_off),
        "cpu_ms_per_write_on": round3(cpu_on),
        "cpu_more_pct": round1(cpu_more),
        "seal_lag": lag.json(),
    });
    if a.export_entries > 0 {
        let e = export_rss(&a).await?;
        println!(
            "  export of {} entries: {:.1} s ({:.0} lines/s); server RSS {:.1} MiB before, peak {:.1} MiB while streaming",
            e.lines,
            e.secs,
            e.lines as f64 / e.secs.max(1e-9),
            e.rss_before_mib,
            e.rss_peak_mib
        );
        fields["export_lines"] = json!(e.lines);
        fields["export_rss_before_mib"] = json!(round1(e.rss_before_mib));
        fields["export_rss_peak_mib"] = json!(round1(e.rss_peak_mib));
    }
    summary("audit-chain", fields);
    Ok(())
}
