//! The cost of the tamper-evident audit chain: API write rate with sealing on vs off, and
//! the sealing lag (commit -> sealed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::harness::{connect, round1, summary, Api, BenchDb, Percentiles, Server, ServerOpts};

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
}

fn opts(seal_interval_ms: u64) -> ServerOpts {
    ServerOpts {
        concurrency: 64,
        per_endpoint: 8,
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

/// Writes per second over one round against a fresh server and database.
async fn write_rate(a: &AuditChainArgs, seal_interval_ms: u64) -> Result<f64> {
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
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.duration_secs)).await;
    let after = done.load(Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in warm {
        w.await??;
    }
    Ok((after - before) as f64 / wall)
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

/// Runs the scenario.
pub async fn run(a: AuditChainArgs) -> Result<()> {
    println!(
        "== audit-chain: {} clients of PUT /tenants/:id/config/:key for {} s per round, {} rounds per mode (sealing off = STRATUM_AUDIT_SEAL_INTERVAL_MS=0, on = {}); then {} lag probes",
        a.clients, a.duration_secs, a.rounds, a.seal_interval_ms, a.probes
    );
    let mut off = Vec::new();
    let mut on = Vec::new();
    for r in 0..a.rounds {
        // Alternate which mode goes first, so warming of the machine evens out.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for sealing in order {
            let interval = if sealing { a.seal_interval_ms } else { 0 };
            let rate = write_rate(&a, interval).await?;
            println!(
                "  round {} sealing {:<3}  {:>8.1} writes/s",
                r + 1,
                if sealing { "on" } else { "off" },
                rate
            );
            if sealing {
                on.push(rate)
            } else {
                off.push(rate)
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
    let (lag, background) = sealing_lag(&a).await?;
    println!("{}", lag.line("sealing lag (commit -> sealed)"));
    println!("  (beside {background} background writes)");
    summary(
        "audit-chain",
        json!({
            "write_rate_off_per_s": round1(off_rate),
            "write_rate_on_per_s": round1(on_rate),
            "slower_pct": round1(slower),
            "seal_lag": lag.json(),
        }),
    );
    Ok(())
}
