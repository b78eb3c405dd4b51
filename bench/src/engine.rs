//! The delivery engine at the settings a user gets (issue 11's table): the API writing
//! while the worker delivers, a hot tenant, spread tenants, a slow receiver beside normal
//! ones, API writes alone, a pure drain, the purge of a million expired deliveries and the
//! server's memory; then issue 22's delivery controls (a timing-out webhook's circuit
//! breaker, a FIFO lane, a rate limit over two workers). Every row prints the machine's busy
//! share and the CPU split, and every delivery row counts, at the receiver, each
//! (webhook, PATCH) pair: lost and duplicated.
//!
//! The server runs with no delivery setting in its environment (`STRATUM_WORKER_*`,
//! `STRATUM_WEBHOOK_MAX_IN_FLIGHT_*` unset), so whatever defaults the binary has are what
//! is measured. Only `STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS` is set (the receiver is on
//! loopback).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::harness::{
    connect, ms, proc_cpu_secs, round1, round3, rss_kib, summary, Api, BenchDb, Percentiles,
    Server, ServerOpts,
};
use crate::receiver::{Hook, Receiver};

mod controls;

/// Settings of the engine scenario (the defaults are issue 11's shapes).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Rows to run (a..l; default: all).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<char>,
    /// PATCHes of the throughput rows (a, b).
    #[arg(long, default_value_t = 2_000)]
    pub patches: u64,
    /// Child tenants of the spread rows.
    #[arg(long, default_value_t = 64)]
    pub tenants: usize,
    /// Webhooks of the throughput rows (a, b, g).
    #[arg(long, default_value_t = 10)]
    pub webhooks: usize,
    /// Client keep-alive connections; each carries one request at a time.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// PATCH rate of the latency rows (c, d, e), open loop.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds of load of each latency phase (c, d, e).
    #[arg(long, default_value_t = 8)]
    pub latency_secs: u32,
    /// Runs of the isolation row (e); the first run's phase without the slow receiver is row d.
    #[arg(long, default_value_t = 5)]
    pub isolation_runs: u32,
    /// How long the slow receiver takes to answer.
    #[arg(long, default_value_t = 10)]
    pub slow_secs: u64,
    /// Seconds of closed-loop API writes (f).
    #[arg(long, default_value_t = 8)]
    pub api_secs: u32,
    /// Row f also runs on a second server exporting its traces (OTLP HTTP/protobuf, every
    /// trace sampled) to an in-process sink on loopback, and prints both.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub api_traced: bool,
    /// PATCHes enqueued before the pure drain (g), each fanned out to --webhooks.
    #[arg(long, default_value_t = 4_000)]
    pub drain_patches: u64,
    /// Expired deliveries the purge row (h) removes.
    #[arg(long, default_value_t = 1_000_000)]
    pub purge: u64,
    /// How long to wait for deliveries after the last answer.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
    /// Row j: seconds of load right after the timing-out webhook is added, while its
    /// breaker opens (more than the server's 10 s attempt timeout).
    #[arg(long, default_value_t = 15)]
    pub opening_secs: u32,
    /// Row j: the window after the breaker opened over which attempts to the timing-out
    /// webhook are counted.
    #[arg(long, default_value_t = 60)]
    pub breaker_window_secs: u64,
    /// Row k: PATCHes enqueued before the FIFO drain, one delivery each.
    #[arg(long, default_value_t = 2_000)]
    pub fifo_patches: u64,
    /// Row l: the webhook's `rate_limit_per_second`.
    #[arg(long, default_value_t = 100)]
    pub rate_limit: u32,
    /// Row l: PATCHes enqueued before the rate-limited drain, one delivery each.
    #[arg(long, default_value_t = 1_500)]
    pub limited_patches: u64,
}

// ---------------------------------------------------------------------------------------
// CPU, busy share and memory

/// One `postgres` process: CPU seconds so far, whether it serves the row's database, and
/// (for the postmaster) the CPU seconds of its children that have exited.
#[derive(Debug, Clone, Copy)]
struct PgProc {
    secs: f64,
    own: bool,
    reaped: f64,
}

/// CPU seconds so far of the processes a row involves, and of the machine.
#[derive(Debug, Clone, Default)]
struct Cpu {
    stratum: f64,
    postgres: HashMap<u32, PgProc>,
    bench: f64,
    busy: f64,
    total: f64,
}

/// `(comm, utime + stime, cutime + cstime, ppid)` of one process, in seconds.
fn proc_stat(pid: &str) -> Option<(String, f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // `rest` starts at field 3 of stat(5): ppid is field 4, utime..cstime fields 14..17.
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let f = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok());
    let ppid = rest.get(1)?.parse().ok()?;
    Some((
        comm,
        (f(11)? + f(12)?) / 100.0,
        (f(13)? + f(14)?) / 100.0,
        ppid,
    ))
}

impl Cpu {
    /// `stratum` = the given pids; PostgreSQL = every `postgres` process (its backends for
    /// `db` also apart); the load generator and receiver = this process.
    fn take(stratum: &[u32], db: &str) -> Self {
        let needle = format!(" {db} ");
        let mut s = Self {
            stratum: stratum
                .iter()
                .filter_map(|p| proc_cpu_secs(&p.to_string()).map(|(_, c)| c))
                .sum(),
            bench: proc_cpu_secs("self").map(|(_, c)| c).unwrap_or(0.0),
            ..Self::default()
        };
        let mut procs: Vec<(u32, String, f64, f64, u32)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str() else { continue };
                let Ok(n) = pid.parse::<u32>() else { continue };
                if let Some((comm, secs, children, ppid)) = proc_stat(pid) {
                    if comm == "postgres" {
                        procs.push((n, comm, secs, children, ppid));
                    }
                }
            }
        }
        let pg_pids: HashSet<u32> = procs.iter().map(|p| p.0).collect();
        for (pid, _, secs, children, ppid) in procs {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // The postmaster is the one postgres process whose parent is not postgres; it
            // reaps the backends, so their CPU lives on in its cutime + cstime.
            let postmaster = !pg_pids.contains(&ppid);
            s.postgres.insert(
                pid,
                PgProc {
                    secs,
                    own: String::from_utf8_lossy(&cmdline).contains(&needle),
                    reaped: if postmaster { children } else { 0.0 },
                },
            );
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            if let Some(cpu) = stat.lines().next() {
                let v: Vec<f64> = cpu
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal (guest is inside user).
                let total: f64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
                s.total = total / 100.0;
                s.busy = (total - idle) / 100.0;
            }
        }
        s
    }

    /// What was spent between `earlier` and `self`. PostgreSQL: per process, the CPU since
    /// `earlier` (all of it for a process started since); a process that exited in between
    /// is counted through the postmaster's reaped-children time, less what it had already
    /// spent at `earlier`. Its own database's backends: the live ones' deltas (a backend
    /// that exited in between is missing there).
    fn since(&self, earlier: &Self) -> CpuSplit {
        let mut postgres = 0.0;
        let mut own = 0.0;
        for (pid, now) in &self.postgres {
            let before = earlier.postgres.get(pid);
            let d = now.secs - before.map_or(0.0, |b| b.secs);
            postgres += d;
            if now.own {
                own += d;
            }
            postgres += now.reaped - before.map_or(now.reaped, |b| b.reaped);
        }
        for (pid, gone) in &earlier.postgres {
            if !self.postgres.contains_key(pid) {
                postgres -= gone.secs;
            }
        }
        CpuSplit {
            stratum: self.stratum - earlier.stratum,
            postgres: postgres.max(0.0),
            postgres_own: own,
            bench: self.bench - earlier.bench,
            busy_pct: 100.0 * (self.busy - earlier.busy) / (self.total - earlier.total).max(1e-9),
        }
    }
}

/// CPU seconds spent during a row.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    stratum: f64,
    postgres: f64,
    postgres_own: f64,
    bench: f64,
    busy_pct: f64,
}

impl CpuSplit {
    fn line(&self, wall: f64) -> String {
        format!(
            "machine busy {:.0}% of {} cores over {:.1} s; CPU s: stratum {:.2}, PostgreSQL {:.2} (its backends {:.2}), load generator+receiver {:.2}",
            self.busy_pct,
            cores(),
            wall,
            self.stratum,
            self.postgres,
            self.postgres_own,
            self.bench
        )
    }

    fn json(&self, wall: f64) -> Value {
        json!({
            "wall_s": round1(wall),
            "busy_pct": round1(self.busy_pct),
            "cpu_stratum_s": round2(self.stratum),
            "cpu_postgres_s": round2(self.postgres),
            "cpu_postgres_own_s": round2(self.postgres_own),
            "cpu_loadgen_s": round2(self.bench),
        })
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Samples the RSS of the stratum processes every 100 ms; `take_max` reads and resets.
struct RssSampler {
    max_kib: Arc<AtomicU64>,
    pids: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let me = Self {
            max_kib: Arc::new(AtomicU64::new(0)),
            pids: Arc::new(Mutex::new(vec![pid])),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (max, pids, stop) = (
            Arc::clone(&me.max_kib),
            Arc::clone(&me.pids),
            Arc::clone(&me.stop),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let pids = pids.lock().map(|p| p.clone()).unwrap_or_default();
                for p in pids {
                    if let Some((rss, _)) = rss_kib(p) {
                        max.fetch_max(rss, Ordering::AcqRel);
                    }
                }
            }
        });
        me
    }

    fn add(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.push(pid);
        }
    }

    fn take_max_mib(&self) -> f64 {
        self.max_kib.swap(0, Ordering::AcqRel) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------
// Receipts

/// Every request the receiver got: which webhook (by path), which PATCH (the sequence
/// number the tenant's metadata carried), and when.
#[derive(Default)]
struct Receipts {
    seen: Mutex<Vec<(u32, u64, Instant)>>,
    slow: AtomicU64,
    /// When each request to the webhook that never answers in time (row j) arrived.
    dead: Mutex<Vec<Instant>>,
    unparsed: AtomicU64,
}

impl Receipts {
    fn hook(self: &Arc<Self>, slow: Duration) -> Hook {
        let me = Arc::clone(self);
        Arc::new(move |path: &str, body: &[u8], at: Instant| {
            if path == "slow" {
                me.slow.fetch_add(1, Ordering::Relaxed);
                return Some(slow);
            }
            if path == "dead" {
                if let Ok(mut dead) = me.dead.lock() {
                    dead.push(at);
                }
                // Far beyond any attempt timeout: the server gives up first.
                return Some(Duration::from_secs(3600));
            }
            let hook = path.strip_prefix('w').and_then(|n| n.parse::<u32>().ok());
            let seq = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["data"]["metadata"]["seq"].as_u64());
            match (hook, seq, me.seen.lock()) {
                (Some(h), Some(s), Ok(mut seen)) => seen.push((h, s, at)),
                _ => {
                    me.unparsed.fetch_add(1, Ordering::Relaxed);
                }
            }
            None
        })
    }

    fn snapshot(&self) -> Vec<(u32, u64, Instant)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The system under test for one row

/// A server, its database, the receiver, tenants and webhooks.
struct Rig {
    rx: Receiver,
    receipts: Arc<Receipts>,
    server: Server,
    db: BenchDb,
    api: Api,
    /// The tenants PATCHed.
    tenants: Vec<String>,
    /// Where webhooks are created (the one tenant, or the parent of the spread ones).
    owner: String,
    /// Normal webhooks.
    hooks: u32,
    /// Webhook `i` belongs to tenant `i` (and gets only its PATCHes) instead of every
    /// webhook getting every PATCH.
    per_tenant: bool,
    rss: RssSampler,
    next_seq: u64,
}

impl Rig {
    /// `spread` child tenants under one parent (0: one tenant), `hooks` webhooks on the
    /// parent (or the one tenant) subscribed to `tenant.updated`.
    async fn new(a: &EngineArgs, spread: usize, hooks: u32, no_worker: bool) -> Result<Self> {
        Self::with_opts(a, spread, hooks, &defaults(no_worker)).await
    }

    /// [`Rig::new`] with the server started as `opts` says.
    async fn with_opts(
        a: &EngineArgs,
        spread: usize,
        hooks: u32,
        opts: &ServerOpts,
    ) -> Result<Self> {
        let receipts = Arc::new(Receipts::default());
        let rx = Receiver::start(
            a.receiver_threads,
            Instant::now(),
            Some(receipts.hook(Duration::from_secs(a.slow_secs))),
        )?;
        let db = BenchDb::create().await?;
        let server = Server::start(&db, opts).await?;
        let api = server.api()?;
        let owner = api.create_tenant("bench_owner").await?;
        let tenants = if spread == 0 {
            vec![owner.clone()]
        } else {
            use futures_util::stream::{self, StreamExt, TryStreamExt};
            let api2 = api.clone();
            let parent = owner.clone();
            stream::iter(0..spread)
                .map(|i| {
                    let (api, parent) = (api2.clone(), parent.clone());
                    async move {
                        let v = api
                            .post(
                                "/tenants",
                                &json!({"name": format!("Child {i}"), "slug": format!("child_{i}"), "parent_id": parent}),
                                201,
                            )
                            .await?;
                        v["id"]
                            .as_str()
                            .map(str::to_owned)
                            .context("no id in the created tenant")
                    }
                })
                .buffered(8)
                .try_collect()
                .await?
        };
        for i in 0..hooks {
            api.create_webhook(
                &format!("{}/w{i}", rx.base),
                &["tenant.updated"],
                Some(&owner),
            )
            .await?;
        }
        let rss = RssSampler::start(server.pid());
        Ok(Self {
            rx,
            receipts,
            server,
            db,
            api,
            tenants,
            owner,
            hooks,
            per_tenant: false,
            rss,
            next_seq: 0,
        })
    }

    /// Adds the webhook whose receiver takes `--slow-secs`.
    async fn add_slow(&self) -> Result<()> {
        self.api
            .create_webhook(
                &format!("{}/slow", self.rx.base),
                &["tenant.updated"],
                Some(&self.owner),
            )
            .await?;
        Ok(())
    }
}

/// The server at the binary's own delivery defaults.
fn defaults(no_worker: bool) -> ServerOpts {
    ServerOpts {
        concurrency: None,
        per_endpoint: None,
        no_worker,
        extra_env: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// One PATCH as the client saw it.
#[derive(Clone, Copy)]
struct Outcome {
    seq: u64,
    scheduled: Instant,
    started: Instant,
    done: Instant,
    ok: bool,
}

enum Load {
    /// `n` requests as fast as the connections carry them.
    Count(u64),
    /// As many as the connections carry for this long.
    For(Duration),
    /// `rate` per second for this long, scheduled on a clock (missed ticks burst).
    Open { rate: u32, secs: u32 },
}

/// PATCHes `metadata = {"seq": <seq>}` on the rig's tenants in turn over `conns`
/// connections; returns every outcome.
async fn drive(rig: &mut Rig, load: Load, conns: usize) -> Result<Vec<Outcome>> {
    let paths: Arc<Vec<String>> = Arc::new(
        rig.tenants
            .iter()
            .map(|t| format!("/tenants/{t}"))
            .collect(),
    );
    let first = rig.next_seq;
    // Closed loop for a while: each connection takes the next number until time is up.
    let counter = Arc::new(AtomicU64::new(first));
    let until = match load {
        Load::For(d) => Some(Instant::now() + d),
        _ => None,
    };
    let (tx, queue) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns.max(1) {
        // One client each, one request at a time on it: one keep-alive connection each.
        let api = rig.server.api()?;
        let (paths, queue, counter) =
            (Arc::clone(&paths), Arc::clone(&queue), Arc::clone(&counter));
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let job = match until {
                    Some(end) => {
                        let now = Instant::now();
                        (now < end).then(|| (counter.fetch_add(1, Ordering::AcqRel), now))
                    }
                    // The lock is held only while waiting for the next job.
                    None => queue.lock().await.recv().await,
                };
                let Some((seq, scheduled)) = job else {
                    return out;
                };
                let path = &paths[(seq as usize) % paths.len()];
                let body = json!({"metadata": {"seq": seq}});
                let started = Instant::now();
                let res = api.call(reqwest::Method::PATCH, path, Some(&body)).await;
                let ok = matches!(res, Ok((s, _)) if (200..300).contains(&s));
                out.push(Outcome {
                    seq,
                    scheduled,
                    started,
                    done: Instant::now(),
                    ok,
                });
            }
        });
    }
    let mut seq = first;
    match load {
        Load::Count(n) => {
            let now = Instant::now();
            for _ in 0..n {
                let _ = tx.send((seq, now));
                seq += 1;
            }
        }
        Load::For(_) => {}
        Load::Open { rate, secs } => {
            let total = u64::from(rate) * u64::from(secs);
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            // Missed ticks burst: the schedule stays the schedule even when this task was late.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..total {
                let at = tick.tick().await.into_std();
                let _ = tx.send((seq, at));
                seq += 1;
            }
        }
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r?);
    }
    rig.next_seq = seq.max(counter.load(Ordering::Acquire));
    Ok(out)
}

/// Waits until every webhook in `hooks` has received every successful PATCH in
/// `outcomes` (or `drain` passes after the last answer), then counts.
async fn settle(rig: &Rig, outcomes: &[Outcome], hooks: u32, drain: Duration) -> Delivered {
    let ok: HashMap<u64, Instant> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| (o.seq, o.done))
        .collect();
    let tenants = rig.tenants.len().max(1) as u64;
    let per_tenant = rig.per_tenant;
    // Whether (webhook, PATCH) is a pair the webhook should receive.
    let wanted = |h: u32, s: u64| h < hooks && (!per_tenant || u64::from(h) == s % tenants);
    let expected = if per_tenant {
        ok.len()
    } else {
        ok.len() * hooks as usize
    };
    let deadline = Instant::now() + drain;
    loop {
        let got = rig.receipts.snapshot();
        let distinct: HashSet<(u32, u64)> = got
            .iter()
            .filter(|(h, s, _)| wanted(*h, *s) && ok.contains_key(s))
            .map(|(h, s, _)| (*h, *s))
            .collect();
        if distinct.len() >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = rig.receipts.snapshot();
    let mut first_at: HashMap<(u32, u64), Instant> = HashMap::new();
    let mut total = 0usize;
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for (h, s, at) in got {
        if !wanted(h, s) || !ok.contains_key(&s) {
            continue;
        }
        total += 1;
        first = Some(first.map_or(at, |f: Instant| f.min(at)));
        last = Some(last.map_or(at, |l: Instant| l.max(at)));
        first_at
            .entry((h, s))
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let mut latency: Vec<f64> = first_at
        .iter()
        .map(|((_, s), at)| diff_ms(*at, ok[s]))
        .collect();
    let lost = expected.saturating_sub(first_at.len());
    latency.extend(std::iter::repeat_n(f64::INFINITY, lost));
    Delivered {
        expected,
        distinct: first_at.len(),
        duplicated: total - first_at.len(),
        lost,
        first,
        last,
        latency: Percentiles::of(latency),
    }
}

struct Delivered {
    expected: usize,
    distinct: usize,
    duplicated: usize,
    lost: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    latency: Option<Percentiles>,
}

impl Delivered {
    fn per_s(&self) -> f64 {
        match (self.first, self.last) {
            (Some(f), Some(l)) if l > f => self.distinct as f64 / (l - f).as_secs_f64(),
            _ => f64::NAN,
        }
    }

    fn line(&self) -> String {
        format!(
            "deliveries {} of {} (lost {}, duplicated {})",
            self.distinct, self.expected, self.lost, self.duplicated
        )
    }

    fn json(&self) -> Value {
        json!({
            "deliveries_expected": self.expected,
            "deliveries": self.distinct,
            "lost": self.lost,
            "duplicated": self.duplicated,
        })
    }
}

/// `(later - earlier)` in ms, negative when `later` came first.
fn diff_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

/// Successful answers per second from the first send to the last answer.
fn api_rate(outcomes: &[Outcome]) -> f64 {
    let (Some(first), Some(last)) = (
        outcomes.iter().map(|o| o.started).min(),
        outcomes.iter().map(|o| o.done).max(),
    ) else {
        return 0.0;
    };
    outcomes.iter().filter(|o| o.ok).count() as f64 / (last - first).as_secs_f64().max(1e-9)
}

fn failed(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| !o.ok).count()
}

// ---------------------------------------------------------------------------------------
// Rows

/// One printed row of the table.
struct Row {
    key: char,
    shape: String,
    result: String,
    cpu: CpuSplit,
    wall: f64,
    rss_mib: f64,
    json: Value,
}

impl Row {
    fn print(&self) {
        println!("  ({}) {}", self.key, self.shape);
        println!("      {}", self.result);
        println!(
            "      {}; stratum RSS max {:.1} MiB",
            self.cpu.line(self.wall),
            self.rss_mib
        );
        if let Some(line) = self.per_op_line() {
            println!("      {line}");
        }
    }

    /// What the row counts as one operation, and how many it did: writes for row f,
    /// deliveries where the row delivers, PATCHes otherwise.
    fn ops(&self) -> Option<(f64, &'static str)> {
        let n = |v: &Value| v.as_f64().filter(|n| *n > 0.0);
        if self.key == 'f' {
            return n(&self.json["api"]["n"]).map(|n| (n, "write"));
        }
        n(&self.json["deliveries"])
            .map(|n| (n, "delivery"))
            .or_else(|| n(&self.json["api"]["n"]).map(|n| (n, "PATCH")))
    }

    /// The row's rate as a share of the machine's yardstick (one-row transactions/s), for
    /// the rows whose targets are stated that way (a: deliveries/s, f: writes/s).
    fn yardstick_share(&self) -> Option<f64> {
        let tps = yardstick_tps()?;
        let rate = match self.key {
            'a' => self.json["deliveries_per_s"].as_f64()?,
            'f' => self.json["api_per_s"].as_f64()?,
            _ => return None,
        };
        Some(rate / tps)
    }

    /// CPU per operation of the server and of its PostgreSQL backends, and the yardstick
    /// share where there is one.
    fn per_op_line(&self) -> Option<String> {
        let (n, unit) = self.ops()?;
        let us = |s: f64| s * 1e6 / n;
        let mut line = format!(
            "CPU per {unit}: stratum {:.0} us, PostgreSQL {:.0} us (its backends {:.0} us), together {:.0} us",
            us(self.cpu.stratum),
            us(self.cpu.postgres),
            us(self.cpu.postgres_own),
            us(self.cpu.stratum + self.cpu.postgres_own),
        );
        if let Some(share) = self.yardstick_share() {
            line.push_str(&format!("; {share:.3} of the yardstick"));
        }
        Some(line)
    }

    /// [`Self::json`] with the per-operation figures.
    fn json_with_per_op(&self) -> Value {
        let mut v = self.json.clone();
        if let (Some((n, unit)), Value::Object(m)) = (self.ops(), &mut v) {
            m.insert("op".into(), json!(unit));
            m.insert(
                "cpu_stratum_us_per_op".into(),
                json!(round1(self.cpu.stratum * 1e6 / n)),
            );
            m.insert(
                "cpu_postgres_own_us_per_op".into(),
                json!(round1(self.cpu.postgres_own * 1e6 / n)),
            );
            if let Some(share) = self.yardstick_share() {
                m.insert("yardstick_share".into(), json!((share * 1e4).round() / 1e4));
            }
        }
        v
    }
}

/// The machine's yardstick from the same run (one-row `INSERT` transactions/s), when
/// `bench/run.sh` passes it in `STRATUM_BENCH_YARDSTICK_TPS`.
fn yardstick_tps() -> Option<f64> {
    std::env::var("STRATUM_BENCH_YARDSTICK_TPS")
        .ok()?
        .parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
}

/// Rows a and b: PATCHes as fast as 16 connections carry them, every one fanned out to
/// the webhooks; deliveries per second from the first receipt to the last.
async fn throughput_row(a: &EngineArgs, key: char, spread: usize) -> Result<Row> {
    let hooks = a.webhooks as u32;
    let mut rig = Rig::new(a, spread, hooks, false).await?;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let outcomes = drive(&mut rig, Load::Count(a.patches), a.connections).await?;
    let api_secs = t0.elapsed().as_secs_f64();
    let d = settle(&rig, &outcomes, hooks, Duration::from_secs(a.drain_secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid()], rig.db.name()).since(&cpu0);
    let api = Percentiles::of(
        outcomes
            .iter()
            .map(|o| diff_ms(o.done, o.started))
            .collect(),
    );
    let after_api = match (d.last, outcomes.iter().map(|o| o.done).max()) {
        (Some(l), Some(done)) => diff_ms(l, done) / 1e3,
        _ => f64::NAN,
    };
    let where_ = if spread == 0 {
        "one tenant".to_owned()
    } else {
        format!("{spread} child tenants")
    };
    Ok(Row {
        key,
        shape: format!(
            "{} PATCHes over {where_}, {hooks} webhooks on {}, {} connections",
            a.patches,
            if spread == 0 { "it" } else { "the parent" },
            a.connections
        ),
        result: format!(
            "{:.0} deliveries/s end to end (first receipt -> last); API {:.0} req/s over {api_secs:.2} s, p50 {} p99 {}, {} failed; last receipt {after_api:.2} s after the last answer; {}",
            d.per_s(),
            api_rate(&outcomes),
            api.map_or("-".into(), |p| ms(p.p50)),
            api.map_or("-".into(), |p| ms(p.p99)),
            failed(&outcomes),
            d.line()
        ),
        cpu,
        wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({
                "deliveries_per_s": round1(d.per_s()),
                "api_per_s": round1(api_rate(&outcomes)),
                "api": api.map(|p| p.json()),
                "api_failed": failed(&outcomes),
            }),
            &[d.json(), cpu.json(wall)],
        ),
    })
}

/// One open-loop phase at `--rate` for `--latency-secs` on a rig: event -> receipt over
/// the normal webhooks.
async fn latency_phase(a: &EngineArgs, rig: &mut Rig) -> Result<Phase> {
    latency_phase_for(a, rig, a.latency_secs).await
}

/// [`latency_phase`] for `secs` seconds.
async fn latency_phase_for(a: &EngineArgs, rig: &mut Rig, secs: u32) -> Result<Phase> {
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let outcomes = drive(rig, Load::Open { rate: a.rate, secs }, a.connections).await?;
    let achieved = api_rate(&outcomes);
    // From the scheduled send: a PATCH that waited for a free connection counts that wait.
    let api = Percentiles::of(
        outcomes
            .iter()
            .map(|o| diff_ms(o.done, o.scheduled))
            .collect(),
    );
    let d = settle(rig, &outcomes, rig.hooks, Duration::from_secs(a.drain_secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid()], rig.db.name()).since(&cpu0);
    Ok(Phase {
        failed: failed(&outcomes),
        d,
        cpu,
        wall,
        achieved,
        api,
    })
}

/// What one open-loop phase measured.
struct Phase {
    d: Delivered,
    cpu: CpuSplit,
    wall: f64,
    achieved: f64,
    failed: usize,
    api: Option<Percentiles>,
}

impl Phase {
    fn text(&self) -> String {
        let api = self.api.map_or("-".to_owned(), |p| {
            format!(
                "API p50 {} p99 {} from the scheduled send",
                ms(p.p50),
                ms(p.p99)
            )
        });
        match self.d.latency {
            Some(p) => format!(
                "event -> receipt p50 {} p99 {} (max {}); {:.0} PATCH/s achieved, {} failed, {api}; {}",
                ms(p.p50),
                ms(p.p99),
                ms(p.max),
                self.achieved,
                self.failed,
                self.d.line()
            ),
            None => format!("no deliveries; {} failed; {api}", self.failed),
        }
    }

    fn json(&self) -> Value {
        merge(
            json!({"event_receipt": self.d.latency.map(|p| p.json()), "achieved_rate": round1(self.achieved),
                   "api": self.api.map(|p| p.json()), "api_failed": self.failed}),
            &[self.d.json(), self.cpu.json(self.wall)],
        )
    }
}

/// Row c: 500 PATCH/s on one tenant, one webhook.
async fn hot_row(a: &EngineArgs) -> Result<Row> {
    let mut rig = Rig::new(a, 0, 1, false).await?;
    let p = latency_phase(a, &mut rig).await?;
    Ok(Row {
        key: 'c',
        shape: format!(
            "event -> receipt at {} PATCH/s (open loop, {} s) on one tenant, one webhook",
            a.rate, a.latency_secs
        ),
        result: p.text(),
        cpu: p.cpu,
        wall: p.wall,
        rss_mib: rig.rss.take_max_mib(),
        json: p.json(),
    })
}

/// Rows d and e: over the spread tenants, one webhook on the parent; then the same plus
/// a webhook whose receiver takes `--slow-secs`, `--isolation-runs` times on fresh rigs.
async fn isolation_rows(a: &EngineArgs) -> Result<(Row, Row)> {
    let mut row_d: Option<Row> = None;
    let mut ratios = Vec::new();
    let mut runs_json = Vec::new();
    let (mut cpu_e, mut wall_e, mut rss_e) = (CpuSplit::default(), 0.0, 0.0f64);
    let (mut lost_e, mut dup_e) = (0usize, 0usize);
    for run in 1..=a.isolation_runs.max(1) {
        let mut rig = Rig::new(a, a.tenants, 1, false).await?;
        let pa = latency_phase(a, &mut rig).await?;
        let rss_a = rig.rss.take_max_mib();
        rig.add_slow().await?;
        let pb = latency_phase(a, &mut rig).await?;
        let rss_b = rig.rss.take_max_mib();
        let (da, db) = (&pa.d, &pb.d);
        let (p99a, p99b) = (
            da.latency.map_or(f64::INFINITY, |p| p.p99),
            db.latency.map_or(f64::INFINITY, |p| p.p99),
        );
        let ratio = p99b / p99a;
        println!(
            "  isolation run {run}: without the slow receiver {}; with it {}; p99 ratio {ratio:.2}x; slow receiver got {} requests",
            pa.text(),
            pb.text(),
            rig.receipts.slow.load(Ordering::Relaxed)
        );
        ratios.push(ratio);
        runs_json.push(json!({"without": da.latency.map(|p| p.json()), "with": db.latency.map(|p| p.json()),
                              "ratio": round2(ratio), "lost": db.lost, "duplicated": db.duplicated}));
        lost_e += db.lost;
        dup_e += db.duplicated;
        // The busy share of the row is weighted by each phase's wall time.
        let mut weighted = pb.cpu;
        weighted.busy_pct *= pb.wall;
        cpu_e = add_cpu(cpu_e, weighted);
        wall_e += pb.wall;
        rss_e = rss_e.max(rss_b);
        if row_d.is_none() {
            row_d = Some(Row {
                key: 'd',
                shape: format!(
                    "event -> receipt at {} PATCH/s (open loop, {} s) over {} tenants, one webhook on the parent (isolation run 1 without the slow receiver)",
                    a.rate, a.latency_secs, a.tenants
                ),
                result: pa.text(),
                cpu: pa.cpu,
                wall: pa.wall,
                rss_mib: rss_a,
                json: pa.json(),
            });
        }
    }
    let within = ratios.iter().filter(|r| **r <= 1.5).count();
    let list = ratios
        .iter()
        .map(|r| format!("{r:.2}x"))
        .collect::<Vec<_>>()
        .join(", ");
    cpu_e.busy_pct /= wall_e.max(1e-9);
    let row_e = Row {
        key: 'e',
        shape: format!(
            "(d) plus one webhook whose receiver takes {} s: p99 with / p99 without, {} runs",
            a.slow_secs,
            ratios.len()
        ),
        result: format!(
            "{within} of {} within 1.5x (ratios {list}); normal deliveries with the slow one beside them: lost {lost_e}, duplicated {dup_e}",
            ratios.len()
        ),
        cpu: cpu_e,
        wall: wall_e,
        rss_mib: rss_e,
        json: merge(
            json!({"runs": runs_json, "within_1_5": within, "lost": lost_e, "duplicated": dup_e}),
            &[cpu_e.json(wall_e)],
        ),
    };
    let Some(row_d) = row_d else {
        bail!("no isolation run");
    };
    Ok((row_d, row_e))
}

fn add_cpu(a: CpuSplit, b: CpuSplit) -> CpuSplit {
    CpuSplit {
        stratum: a.stratum + b.stratum,
        postgres: a.postgres + b.postgres,
        postgres_own: a.postgres_own + b.postgres_own,
        bench: a.bench + b.bench,
        busy_pct: a.busy_pct + b.busy_pct,
    }
}

/// Row f: closed-loop PATCHes over the spread tenants, one webhook, 16 connections; with
/// `--api-traced`, again on a server exporting every trace to a loopback OTLP sink.
async fn api_row(a: &EngineArgs) -> Result<Row> {
    let (mut row, off) = api_phase(a, &defaults(false)).await?;
    if !a.api_traced {
        return Ok(row);
    }
    // The sink answers 200 to every export and counts requests and bytes.
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&bytes);
    let hook: Hook = Arc::new(move |_path: &str, body: &[u8], _at: Instant| {
        counted.fetch_add(body.len() as u64, Ordering::Relaxed);
        None
    });
    let sink = Receiver::start(1, Instant::now(), Some(hook))?;
    let mut opts = defaults(false);
    opts.extra_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), sink.base.clone()),
        ("OTEL_TRACES_SAMPLER".to_owned(), "always_on".to_owned()),
    ];
    let (traced_row, on) = api_phase(a, &opts).await?;
    // The batch exporter sends every 5 s; what is still buffered at the end is not counted.
    let exports = sink.stats.count();
    let exported = bytes.load(Ordering::Relaxed);
    let change = |on: f64, off: f64| {
        if off > 0.0 {
            (on / off - 1.0) * 100.0
        } else {
            f64::NAN
        }
    };
    row.result = format!(
        "off: {}\n      traced (OTLP, 100 % sampled): {}\n      traced vs off: {:+.1} % req/s, {:+.1} % stratum CPU per write ({:.3} -> {:.3} ms); {exports} exports, {:.1} MiB to the sink",
        row.result,
        traced_row.result,
        change(on.rate, off.rate),
        change(on.stratum_cpu_ms, off.stratum_cpu_ms),
        off.stratum_cpu_ms,
        on.stratum_cpu_ms,
        exported as f64 / (1024.0 * 1024.0),
    );
    if let Value::Object(m) = &mut row.json {
        m.insert("traced".to_owned(), traced_row.json);
        m.insert(
            "traced_change_pct".to_owned(),
            json!({"api_per_s": round2(change(on.rate, off.rate)),
                   "stratum_cpu_per_write": round2(change(on.stratum_cpu_ms, off.stratum_cpu_ms))}),
        );
        m.insert("traced_exports".to_owned(), json!(exports));
    }
    Ok(row)
}

/// The figures of one run of row f that the traced comparison needs.
struct ApiPhase {
    rate: f64,
    stratum_cpu_ms: f64,
}

/// One run of row f on a server started as `opts` says.
async fn api_phase(a: &EngineArgs, opts: &ServerOpts) -> Result<(Row, ApiPhase)> {
    let mut rig = Rig::with_opts(a, a.tenants, 1, opts).await?;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let outcomes = drive(
        &mut rig,
        Load::For(Duration::from_secs(u64::from(a.api_secs))),
        a.connections,
    )
    .await?;
    let load_wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid()], rig.db.name()).since(&cpu0);
    let d = settle(&rig, &outcomes, 1, Duration::from_secs(a.drain_secs)).await;
    let api = Percentiles::of(
        outcomes
            .iter()
            .map(|o| diff_ms(o.done, o.started))
            .collect(),
    );
    let rate = api_rate(&outcomes);
    let per_write = if outcomes.is_empty() {
        0.0
    } else {
        cpu.postgres_own * 1e3 / outcomes.len() as f64
    };
    let stratum_cpu_ms = if outcomes.is_empty() {
        0.0
    } else {
        cpu.stratum * 1e3 / outcomes.len() as f64
    };
    let phase = ApiPhase {
        rate,
        stratum_cpu_ms,
    };
    let row = Row {
        key: 'f',
        shape: format!(
            "API writes: PATCH over {} tenants, 1 webhook, {} connections, closed loop for {} s",
            a.tenants, a.connections, a.api_secs
        ),
        result: format!(
            "{rate:.0} req/s, p50 {} p99 {}, {} failed; its PostgreSQL backends {per_write:.2} ms CPU per write (delivery included); {}",
            api.map_or("-".into(), |p| ms(p.p50)),
            api.map_or("-".into(), |p| ms(p.p99)),
            failed(&outcomes),
            d.line()
        ),
        cpu,
        wall: load_wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({"api_per_s": round1(rate), "api": api.map(|p| p.json()), "api_failed": failed(&outcomes),
                   "pg_cpu_ms_per_write": round2(per_write),
                   "stratum_cpu_ms_per_write": round3(stratum_cpu_ms)}),
            &[d.json(), cpu.json(load_wall)],
        ),
    };
    Ok((row, phase))
}

/// Row g: the backlog of `--drain-patches` x `--webhooks` deliveries, enqueued through the
/// API with no worker running, drained by a `stratum worker` at its defaults.
async fn drain_row(a: &EngineArgs) -> Result<Row> {
    let hooks = a.webhooks as u32;
    let mut rig = Rig::new(a, a.tenants, hooks, true).await?;
    let outcomes = drive(&mut rig, Load::Count(a.drain_patches), a.connections).await?;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let worker = Server::spawn_worker(&rig.db, &defaults(false))?;
    rig.rss.add(worker.pid());
    let d = settle(
        &rig,
        &outcomes,
        hooks,
        Duration::from_secs(a.drain_secs.max(120)),
    )
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid(), worker.pid()], rig.db.name()).since(&cpu0);
    let startup = d.first.map_or(f64::NAN, |f| diff_ms(f, t0) / 1e3);
    let row = Row {
        key: 'g',
        shape: format!(
            "pure drain at defaults: {} deliveries ({} PATCHes x {hooks} webhooks, enqueued with no worker running), then `stratum worker`",
            d.expected, a.drain_patches
        ),
        result: format!(
            "{:.0} deliveries/s (first receipt -> last; first receipt {startup:.2} s after the worker was started); {}",
            d.per_s(),
            d.line()
        ),
        cpu,
        wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({"deliveries_per_s": round1(d.per_s())}),
            &[d.json(), cpu.json(wall)],
        ),
    };
    drop(worker);
    Ok(row)
}

/// Rows expired: events, finished deliveries and one attempt each, 120 days old. The same
/// shape as `bench/maintenance.sh purge`. Loaded as a server running since then would have
/// written them: ids minted at that time (UUIDv7, the partition key) into the weekly
/// partitions it would have created ahead, with the same function it uses.
const PURGE_LOAD: &str = "
SELECT stratum_create_partitions(now() - interval '120 days', now());
INSERT INTO webhook_events (id, event_type, payload, created_at)
SELECT stratum_uuid_v7_at(now() - interval '120 days'), 'tenant.updated', jsonb_build_object('n', g),
       now() - interval '120 days'
  FROM generate_series(1, $N) g;
INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, created_at, completed_at)
SELECT stratum_uuid_v7_at(e.created_at), '$HOOK', e.id, 'tenant.updated', 'success', 1, e.created_at, e.created_at + interval '1 second'
  FROM webhook_events e;
INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code, duration_ms, created_at)
SELECT stratum_uuid_v7_at(d.created_at), d.id, d.event_id, 1, 200, 12, d.created_at FROM webhook_deliveries d;";

/// Row h: `POST /maintenance/purge-expired` over `--purge` expired deliveries.
async fn purge_row(a: &EngineArgs) -> Result<Row> {
    let db = BenchDb::create().await?;
    let server = Server::start(&db, &defaults(true)).await?;
    let api = server.api()?;
    let hook = api
        .create_webhook("https://example.com/purge", &["tenant.updated"], None)
        .await?;
    let sql = connect(&db.url).await?;
    let t_load = Instant::now();
    sql.batch_execute(
        &PURGE_LOAD
            .replace("$N", &a.purge.to_string())
            .replace("$HOOK", &hook),
    )
    .await
    .context("loading the expired rows")?;
    // VACUUM cannot run in the implicit transaction of a multi-statement batch.
    sql.batch_execute(
        "VACUUM ANALYZE webhook_events, webhook_deliveries, webhook_delivery_attempts",
    )
    .await
    .context("vacuuming the loaded rows")?;
    println!(
        "  (h) loaded {} expired events + deliveries + attempts in {:.1} s",
        a.purge,
        t_load.elapsed().as_secs_f64()
    );
    let rss = RssSampler::start(server.pid());
    let cpu0 = Cpu::take(&[server.pid()], db.name());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1800))
        .build()?;
    let t0 = Instant::now();
    let res = client
        .post(format!("{}/api/v1/maintenance/purge-expired", server.base))
        .header("X-API-Key", crate::harness::ADMIN)
        .json(&json!({}))
        .send()
        .await?;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[server.pid()], db.name()).since(&cpu0);
    let purged = body["deliveries"].as_u64().unwrap_or(0);
    Ok(Row {
        key: 'h',
        shape: format!("purge of {} expired deliveries (with their attempts and events)", a.purge),
        result: format!(
            "{secs:.2} s (POST /maintenance/purge-expired, HTTP {status}); {purged} deliveries purged, answer {body}"
        ),
        cpu,
        wall: secs,
        rss_mib: rss.take_max_mib(),
        json: merge(
            json!({"seconds": round2(secs), "status": status, "purged": purged}),
            &[cpu.json(secs)],
        ),
    })
}

/// `x` rounded to two decimals.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn merge(mut base: Value, more: &[Value]) -> Value {
    if let Some(o) = base.as_object_mut() {
        for m in more {
            if let Some(mo) = m.as_object() {
                o.extend(mo.clone());
            }
        }
    }
    base
}

/// Runs the rows, prints each as it completes and the table at the end.
pub async fn run(a: EngineArgs) -> Result<()> {
    let want = |c: char| a.rows.is_empty() || a.rows.contains(&c);
    println!(
        "== engine: issue 11's shapes at the binary's default delivery settings ({} cores; API load concurrent with delivery)",
        cores()
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |r: Row| {
        r.print();
        rows.push(r);
    };
    if want('a') {
        push(throughput_row(&a, 'a', a.tenants).await?);
    }
    if want('b') {
        push(throughput_row(&a, 'b', 0).await?);
    }
    if want('c') {
        push(hot_row(&a).await?);
    }
    if want('d') || want('e') {
        let (d, e) = isolation_rows(&a).await?;
        push(d);
        push(e);
    }
    if want('f') {
        push(api_row(&a).await?);
    }
    if want('g') {
        push(drain_row(&a).await?);
    }
    if want('h') && a.purge > 0 {
        push(purge_row(&a).await?);
    }
    if want('j') {
        push(controls::breaker_row(&a).await?);
    }
    if want('k') {
        push(controls::fifo_row(&a).await?);
    }
    if want('l') {
        push(controls::rate_limit_row(&a).await?);
    }
    // Row i is issue 11's: the rows of its table (a-h), so it compares with earlier runs.
    let max_rss = rows
        .iter()
        .filter(|r| r.key <= 'h')
        .map(|r| (r.rss_mib, r.key))
        .fold((0.0f64, '-'), |m, x| if x.0 > m.0 { x } else { m });
    println!();
    println!("== engine table ({} cores, {})", cores(), now_utc());
    for r in &rows {
        println!("  ({}) {}", r.key, r.shape);
        println!("        {}", r.result);
        println!(
            "        busy {:.0}% | CPU s: stratum {:.2} / PostgreSQL {:.2} (its backends {:.2}) / load generator+receiver {:.2} | RSS max {:.1} MiB",
            r.cpu.busy_pct, r.cpu.stratum, r.cpu.postgres, r.cpu.postgres_own, r.cpu.bench, r.rss_mib
        );
        if let Some(line) = r.per_op_line() {
            println!("        {line}");
        }
    }
    if want('i') {
        println!(
            "  (i) RSS of the server under load (max over rows a-h, sampled every 100 ms): {:.1} MiB (row {})",
            max_rss.0, max_rss.1
        );
    }
    let mut fields = serde_json::Map::new();
    for r in &rows {
        fields.insert(r.key.to_string(), r.json_with_per_op());
    }
    fields.insert("i_rss_max_mib".into(), json!(round1(max_rss.0)));
    summary("engine", Value::Object(fields));
    Ok(())
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
