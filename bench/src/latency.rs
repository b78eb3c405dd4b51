//! Event → receipt latency at a fixed, open-loop rate of real API calls
//! (`PUT /tenants/:id/config/:key`, which journals a `config.updated` event), and the same
//! with one extra receiver that takes 10 s per request (`isolation`).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::harness::{
    connect, ms, round1, round3, summary, xact_commits, Api, BenchDb, CpuSnapshot, Percentiles,
    Server, ServerOpts,
};
use crate::receiver::{Hook, Receiver};

/// Tenants the generator spreads events over, and config keys per tenant. Consecutive
/// events touch different rows (updates of one row serialize on its lock, which would
/// measure the generator, not Stratum), while each tenant's resolved config stays a few
/// keys for the whole run.
const TENANTS: usize = 64;
const KEYS: u64 = 4;

/// Send and receipt instants per event sequence number (ns since `epoch`, 0 = not yet).
pub struct Tracker {
    epoch: Instant,
    start: Vec<AtomicU64>,
    ok: Vec<AtomicU64>,
    /// `seq * lanes + lane`: one slot per receiving webhook.
    recv: Vec<AtomicU64>,
    lanes: usize,
    duplicates: AtomicU64,
    unparsed: AtomicU64,
}

fn zeros(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Tracker {
    fn new(epoch: Instant, events: usize, lanes: usize) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            start: zeros(events),
            ok: zeros(events),
            recv: zeros(events * lanes),
            lanes,
            duplicates: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
        })
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Records a receipt of the event whose body is `body` on `lane`.
    fn received(&self, lane: usize, body: &[u8], at: Instant) {
        let seq = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["data"]["value"].as_u64());
        let Some(slot) = seq.and_then(|s| self.recv.get(s as usize * self.lanes + lane)) else {
            self.unparsed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if slot
            .compare_exchange(0, self.ns(at), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events of `range` whose API call succeeded, and how many lane receipts are missing.
    fn missing(&self, range: &Range<u64>) -> usize {
        range
            .clone()
            .filter(|s| self.ok[*s as usize].load(Ordering::Acquire) != 0)
            .map(|s| {
                (0..self.lanes)
                    .filter(|l| self.recv[s as usize * self.lanes + l].load(Ordering::Acquire) == 0)
                    .count()
            })
            .sum()
    }

    /// (API call ms, receipt − API return ms, receipt − request start ms) over `range`;
    /// a receipt that never came counts as infinitely late.
    fn latencies(&self, range: &Range<u64>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut call, mut from_ok, mut from_start) = (Vec::new(), Vec::new(), Vec::new());
        for s in range.clone() {
            let st = self.start[s as usize].load(Ordering::Acquire);
            let ok = self.ok[s as usize].load(Ordering::Acquire);
            if ok == 0 {
                continue;
            }
            call.push((ok - st) as f64 / 1e6);
            for l in 0..self.lanes {
                match self.recv[s as usize * self.lanes + l].load(Ordering::Acquire) {
                    0 => {
                        from_ok.push(f64::INFINITY);
                        from_start.push(f64::INFINITY);
                    }
                    r => {
                        from_ok.push((r as f64 - ok as f64) / 1e6);
                        from_start.push((r as f64 - st as f64) / 1e6);
                    }
                }
            }
        }
        (call, from_ok, from_start)
    }
}

/// How the load generator fared.
#[derive(Debug, Default)]
struct Sent {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    max_in_flight: u64,
}

/// Sends one config PUT per tick of a `rate`/s interval for every seq of `range`
/// (open loop: a slow answer never delays the next request).
async fn generate(
    api: &Api,
    tenants: &[String],
    tracker: &Arc<Tracker>,
    range: Range<u64>,
    rate: u32,
) -> Result<Sent> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut sent = Sent::default();
    let mut tasks = tokio::task::JoinSet::new();
    let began = Instant::now();
    for seq in range {
        tick.tick().await;
        let (api, tracker, in_flight) = (api.clone(), Arc::clone(tracker), Arc::clone(&in_flight));
        let n = tenants.len().max(1) as u64;
        let tenant = &tenants[(seq % n) as usize];
        let path = format!("/tenants/{tenant}/config/k{}", (seq / n) % KEYS);
        sent.max_in_flight = sent
            .max_in_flight
            .max(in_flight.fetch_add(1, Ordering::AcqRel) + 1);
        tasks.spawn(async move {
            let body = json!({ "value": seq });
            let start = Instant::now();
            let res = api.call(reqwest::Method::PUT, &path, Some(&body)).await;
            let done = Instant::now();
            in_flight.fetch_sub(1, Ordering::AcqRel);
            match res {
                Ok((200, _)) => {
                    tracker.start[seq as usize].store(tracker.ns(start), Ordering::Release);
                    tracker.ok[seq as usize].store(tracker.ns(done), Ordering::Release);
                    Ok(())
                }
                Ok((status, v)) => Err(format!("PUT {path} answered {status}: {v}")),
                Err(e) => Err(format!("PUT {path}: {e:#}")),
            }
        });
        while let Some(r) = tasks.try_join_next() {
            sent.tally(r);
        }
    }
    sent.elapsed = began.elapsed();
    while let Some(r) = tasks.join_next().await {
        sent.tally(r);
    }
    Ok(sent)
}

impl Sent {
    fn tally(&mut self, r: Result<Result<(), String>, tokio::task::JoinError>) {
        let err = match r {
            Ok(Ok(())) => {
                self.ok += 1;
                return;
            }
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }
}

fn count_ok(tracker: &Tracker, range: &Range<u64>) -> u64 {
    range
        .clone()
        .filter(|s| tracker.ok[*s as usize].load(Ordering::Acquire) != 0)
        .count() as u64
}

/// Waits until every receipt of `range` arrived or `timeout` passed.
async fn drain(tracker: &Tracker, range: &Range<u64>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if tracker.missing(range) == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Settings of the latency scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Events per second (open loop).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u32,
    /// Seconds sent first at the same rate and left out of the figures.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u32,
    /// STRATUM_WORKER_CONCURRENCY (the server's default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (the server's default).
    #[arg(long, default_value_t = 8)]
    pub per_endpoint: u32,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
}

struct Setup {
    _rx: Receiver,
    server: Server,
    db: BenchDb,
    api: Api,
    tenants: Vec<String>,
    base: String,
}

async fn setup(
    epoch: Instant,
    hook: Hook,
    threads: usize,
    opts: &ServerOpts,
    slug: &str,
) -> Result<Setup> {
    let rx = Receiver::start(threads, epoch, Some(hook))?;
    let db = BenchDb::create().await?;
    let server = Server::start(&db, opts).await?;
    let api = server.api()?;
    let mut tenants = Vec::with_capacity(TENANTS);
    for i in 0..TENANTS {
        tenants.push(api.create_tenant(&format!("{slug}_{i}")).await?);
    }
    let base = rx.base.clone();
    Ok(Setup {
        _rx: rx,
        server,
        db,
        api,
        tenants,
        base,
    })
}

/// Runs the latency scenario.
pub async fn run_latency(a: LatencyArgs) -> Result<()> {
    let epoch = Instant::now();
    let warm = u64::from(a.rate) * u64::from(a.warmup_secs);
    let total = warm + u64::from(a.rate) * u64::from(a.duration_secs);
    let tracker = Tracker::new(epoch, total as usize, 1);
    let t = Arc::clone(&tracker);
    let hook: Hook = Arc::new(move |path: &str, body: &[u8], at: Instant| {
        if path == "lat" {
            t.received(0, body, at);
        }
        None
    });
    let opts = ServerOpts {
        concurrency: Some(a.concurrency),
        per_endpoint: Some(a.per_endpoint),
        no_worker: false,
        extra_env: Vec::new(),
    };
    let s = setup(epoch, hook, a.receiver_threads, &opts, "bench_latency").await?;
    s.api
        .create_webhook(&format!("{}/lat", s.base), &["config.updated"], None)
        .await?;
    println!(
        "== latency: {} events/s for {} s (+{} s warm-up) via PUT /tenants/:id/config/:key over {TENANTS} tenants x {KEYS} keys -> config.updated -> 1 global webhook",
        a.rate, a.duration_secs, a.warmup_secs
    );
    println!("  {}", opts.describe());
    let sql = connect(&s.db.url).await?;
    let commits0 = xact_commits(&sql).await?;
    let cpu0 = CpuSnapshot::take(s.server.pid(), s.db.name());
    let t0 = Instant::now();
    let sent = generate(&s.api, &s.tenants, &tracker, 0..total, a.rate).await?;
    let measured = warm..total;
    drain(&tracker, &(0..total), Duration::from_secs(30)).await;
    let missing = tracker.missing(&measured);
    let cpu1 = CpuSnapshot::take(s.server.pid(), s.db.name());
    let ok = count_ok(&tracker, &measured);
    let (call, from_ok, from_start) = tracker.latencies(&measured);
    let negative = from_ok.iter().filter(|x| **x < 0.0).count();
    println!(
        "  sent {} requests in {:.2} s ({:.0}/s achieved; max {} in flight); {} answered 200, {} errors{}",
        total,
        sent.elapsed.as_secs_f64(),
        total as f64 / sent.elapsed.as_secs_f64(),
        sent.max_in_flight,
        sent.ok,
        sent.errors,
        sent.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  measured: {ok} events after warm-up; {missing} of them not received 30 s after the last request; {} duplicate receipts",
        tracker.duplicates.load(Ordering::Relaxed)
    );
    let Some(call) = Percentiles::of(call) else {
        bail!("no successful API call to measure");
    };
    let (Some(lat), Some(lat_start)) = (Percentiles::of(from_ok), Percentiles::of(from_start))
    else {
        bail!("nothing received");
    };
    println!("{}", call.line("API call (PUT config, 200)"));
    println!("{}", lat.line("receipt - API call returned"));
    println!("{}", lat_start.line("receipt - API call started"));
    if negative > 0 {
        println!("  ({negative} receipts arrived before the client had read the API's 200: negative latencies)");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits = xact_commits(&sql).await? - commits0;
    println!(
        "  PostgreSQL transactions committed in the database during the run: {commits} ({:.2} per event: the PUT itself, claims, completion batches)",
        commits as f64 / total as f64
    );
    let cpu = cpu0.report(&cpu1, t0.elapsed());
    let mut fields = json!({
        "rate": a.rate,
        "duration_s": a.duration_secs,
        "achieved_rate": round1(total as f64 / sent.elapsed.as_secs_f64()),
        "errors": sent.errors,
        "missing": missing,
        "latency": lat.json(),
        "latency_from_request_start": lat_start.json(),
        "api_call": call.json(),
        "db_commits_per_event": round3(commits as f64 / total as f64),
    });
    if let (Some(o), Some(c)) = (fields.as_object_mut(), cpu.as_object()) {
        o.extend(c.clone());
    }
    drop(s);
    summary("latency", fields);
    Ok(())
}

/// Settings of the isolation scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct IsolationArgs {
    /// Events per second (open loop).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds measured per phase.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u32,
    /// Seconds sent first in each phase and left out of the figures.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u32,
    /// Normal webhooks (each answers 200 at once).
    #[arg(long, default_value_t = 4)]
    pub normal: usize,
    /// How long the slow receiver takes per request, in seconds.
    #[arg(long, default_value_t = 10)]
    pub slow_secs: u64,
    /// STRATUM_WORKER_CONCURRENCY (the server's default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (the server's default).
    #[arg(long, default_value_t = 8)]
    pub per_endpoint: u32,
    /// How long to wait, after the last event of a phase, for its normal deliveries.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
}

/// Runs the isolation scenario: phase A without, phase B with the slow webhook, one server.
pub async fn run_isolation(a: IsolationArgs) -> Result<()> {
    let epoch = Instant::now();
    let normal = a.normal.max(1);
    let warm = u64::from(a.rate) * u64::from(a.warmup_secs);
    let per_phase = warm + u64::from(a.rate) * u64::from(a.duration_secs);
    let tracker = Tracker::new(epoch, 2 * per_phase as usize, normal);
    let t = Arc::clone(&tracker);
    let slow = Duration::from_secs(a.slow_secs);
    let slow_hits = Arc::new(AtomicU64::new(0));
    let hits = Arc::clone(&slow_hits);
    let hook: Hook = Arc::new(move |path: &str, body: &[u8], at: Instant| {
        if path == "slow" {
            hits.fetch_add(1, Ordering::Relaxed);
            return Some(slow);
        }
        if let Some(lane) = path.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()) {
            t.received(lane, body, at);
        }
        None
    });
    let opts = ServerOpts {
        concurrency: Some(a.concurrency),
        per_endpoint: Some(a.per_endpoint),
        no_worker: false,
        extra_env: Vec::new(),
    };
    let s = setup(epoch, hook, a.receiver_threads, &opts, "bench_isolation").await?;
    for i in 0..normal {
        s.api
            .create_webhook(&format!("{}/n{i}", s.base), &["config.updated"], None)
            .await?;
    }
    println!(
        "== isolation: {} events/s for {} s (+{} s warm-up) per phase, {normal} normal webhooks; phase B adds one whose receiver takes {} s per request",
        a.rate, a.duration_secs, a.warmup_secs, a.slow_secs
    );
    println!("  {}", opts.describe());

    let mut results = Vec::new();
    for (phase, with_slow) in [
        ("A without slow webhook", false),
        ("B with slow webhook", true),
    ] {
        let offset = if with_slow { per_phase } else { 0 };
        if with_slow {
            s.api
                .create_webhook(&format!("{}/slow", s.base), &["config.updated"], None)
                .await?;
        }
        let range = offset..offset + per_phase;
        let sent = generate(&s.api, &s.tenants, &tracker, range.clone(), a.rate).await?;
        drain(&tracker, &range, Duration::from_secs(a.drain_secs)).await;
        let measured = offset + warm..offset + per_phase;
        let missing = tracker.missing(&measured);
        let (_, from_ok, _) = tracker.latencies(&measured);
        let Some(p) = Percentiles::of(from_ok) else {
            bail!("phase {phase}: nothing measured");
        };
        println!(
            "  phase {phase}: {} events ({} errors); of the {} measured normal deliveries, {missing} had not arrived {} s after the last event{}",
            per_phase,
            sent.errors,
            (per_phase - warm) as usize * normal,
            a.drain_secs,
            if with_slow {
                format!("; slow receiver got {} requests", slow_hits.load(Ordering::Relaxed))
            } else {
                String::new()
            }
        );
        println!("{}", p.line("  normal: receipt - API returned"));
        results.push((p, missing));
    }
    let (a_p, a_missing) = results[0];
    let (b_p, b_missing) = results[1];
    let ratio = b_p.p99 / a_p.p99;
    println!(
        "  p99 without slow webhook {}, with {} -> ratio {}",
        ms(a_p.p99),
        ms(b_p.p99),
        if ratio.is_finite() {
            format!("{ratio:.2}x")
        } else {
            "unbounded (some never arrived)".to_owned()
        }
    );
    let fields = json!({
        "rate": a.rate,
        "duration_s": a.duration_secs,
        "normal_webhooks": normal,
        "slow_secs": a.slow_secs,
        "without_slow": a_p.json(),
        "with_slow": b_p.json(),
        "missing_without": a_missing,
        "missing_with": b_missing,
        "p99_ratio": if ratio.is_finite() { json!(round3(ratio)) } else { Value::Null },
    });
    drop(s);
    summary("isolation", fields);
    Ok(())
}

/// Settings of the replay scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Live events per second (open loop).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds measured per phase.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u32,
    /// Seconds sent first in each phase and left out of the figures.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u32,
    /// Stored events the replay re-enqueues.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// STRATUM_WORKER_CONCURRENCY (the server's default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (the server's default).
    #[arg(long, default_value_t = 8)]
    pub per_endpoint: u32,
    /// How long to wait, after the last event of a phase, for its live deliveries.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Threads of the in-process receiver's runtime.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
}

/// Runs the replay scenario: live latency without (phase A) and during (phase B) a replay
/// of `events` stored events to another webhook of the same server.
pub async fn run_replay(a: ReplayArgs) -> Result<()> {
    let epoch = Instant::now();
    let warm = u64::from(a.rate) * u64::from(a.warmup_secs);
    let per_phase = warm + u64::from(a.rate) * u64::from(a.duration_secs);
    let tracker = Tracker::new(epoch, 2 * per_phase as usize, 1);
    let t = Arc::clone(&tracker);
    let replayed = Arc::new(AtomicU64::new(0));
    let hits = Arc::clone(&replayed);
    let hook: Hook = Arc::new(move |path: &str, body: &[u8], at: Instant| {
        match path {
            "lat" => t.received(0, body, at),
            "rep" => {
                hits.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        None
    });
    let opts = ServerOpts {
        concurrency: Some(a.concurrency),
        per_endpoint: Some(a.per_endpoint),
        no_worker: false,
        extra_env: Vec::new(),
    };
    let s = setup(epoch, hook, a.receiver_threads, &opts, "bench_replay").await?;
    s.api
        .create_webhook(&format!("{}/lat", s.base), &["config.updated"], None)
        .await?;
    let rep = s
        .api
        .create_webhook(&format!("{}/rep", s.base), &["permission.deleted"], None)
        .await?;
    let sql = connect(&s.db.url).await?;
    // The stored history: events no live webhook hears, an hour old, 10 ms apart at most.
    sql.execute(
        "INSERT INTO webhook_events (id, event_type, tenant_id, payload, created_at)
         SELECT stratum_uuid_v7(), 'permission.deleted', NULL, jsonb_build_object('seq', g),
                now() - interval '1 hour' + g * (interval '1 hour' / $1::bigint)
           FROM generate_series(1, $1::bigint) g",
        &[&i64::try_from(a.events)?],
    )
    .await?;
    sql.execute("ANALYZE webhook_events", &[]).await?;
    println!(
        "== replay: {} live events/s for {} s (+{} s warm-up) per phase to one webhook; phase B runs beside a replay of {} stored events to another webhook",
        a.rate, a.duration_secs, a.warmup_secs, a.events
    );
    println!("  {}", opts.describe());

    let mut results = Vec::new();
    let mut replay_id = String::new();
    let mut replay_started = Instant::now();
    for (phase, with_replay) in [("A without replay", false), ("B during replay", true)] {
        let offset = if with_replay { per_phase } else { 0 };
        if with_replay {
            let since = sql
                .query_one(
                    "SELECT to_char((now() - interval '2 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    &[],
                )
                .await?
                .get::<_, String>(0);
            let r = s
                .api
                .post(
                    &format!("/webhooks/{rep}/replay"),
                    &json!({"since": since}),
                    202,
                )
                .await?;
            replay_id = r["id"].as_str().unwrap_or_default().to_owned();
            replay_started = Instant::now();
            println!("  replay {replay_id}: total {}", r["total"]);
        }
        let range = offset..offset + per_phase;
        let sent = generate(&s.api, &s.tenants, &tracker, range.clone(), a.rate).await?;
        drain(&tracker, &range, Duration::from_secs(a.drain_secs)).await;
        let measured = offset + warm..offset + per_phase;
        let missing = tracker.missing(&measured);
        let (_, from_ok, _) = tracker.latencies(&measured);
        let Some(p) = Percentiles::of(from_ok) else {
            bail!("phase {phase}: nothing measured");
        };
        println!(
            "  phase {phase}: {} live events ({} errors); {missing} measured deliveries had not arrived {} s after the last event{}",
            per_phase,
            sent.errors,
            a.drain_secs,
            if with_replay {
                format!(
                    "; replayed deliveries received so far: {}",
                    replayed.load(Ordering::Relaxed)
                )
            } else {
                String::new()
            }
        );
        println!("{}", p.line("  live: receipt - API returned"));
        results.push((p, missing));
    }
    // How long the whole replay takes to be delivered (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(600);
    while replayed.load(Ordering::Relaxed) < a.events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let replay_secs = replay_started.elapsed().as_secs_f64();
    let got = replayed.load(Ordering::Relaxed);
    let (_, job) = s
        .api
        .call(
            reqwest::Method::GET,
            &format!("/webhooks/{rep}/replays/{replay_id}"),
            None,
        )
        .await?;
    println!(
        "  replay: {got} of {} delivered in {replay_secs:.1} s ({:.0}/s); job status {}, enqueued {}",
        a.events,
        got as f64 / replay_secs,
        job["status"],
        job["enqueued"]
    );
    let (a_p, a_missing) = results[0];
    let (b_p, b_missing) = results[1];
    let ratio = b_p.p99 / a_p.p99;
    println!(
        "  live p99 without replay {}, during replay {} -> ratio {}",
        ms(a_p.p99),
        ms(b_p.p99),
        if ratio.is_finite() {
            format!("{ratio:.2}x")
        } else {
            "unbounded (some never arrived)".to_owned()
        }
    );
    let fields = json!({
        "rate": a.rate,
        "duration_s": a.duration_secs,
        "replay_events": a.events,
        "without_replay": a_p.json(),
        "during_replay": b_p.json(),
        "missing_without": a_missing,
        "missing_during": b_missing,
        "p99_ratio": if ratio.is_finite() { json!(round3(ratio)) } else { Value::Null },
        "replay_delivered": got,
        "replay_secs": round1(replay_secs),
    });
    drop(s);
    summary("replay", fields);
    Ok(())
}
