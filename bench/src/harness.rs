//! What every scenario needs: a database of its own, the real `stratum` process, an API
//! client, SQL, and readings from `/proc`.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The bootstrap admin key of the process under test.
pub const ADMIN: &str = "sk_bench_bootstrap_admin_key_0123456789abcdef";
/// Its encryption key.
pub const ENCRYPTION_KEY: &str = "bench-encryption-key-0123456789abcdefgh";

/// The `stratum` binary: `STRATUM_BIN`, else `target/release/stratum` of this workspace.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("STRATUM_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/stratum")
}

/// Connects to `url` and drives the connection on a task of its own.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url} (is PostgreSQL up? `make db-up`)"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database created for one scenario and dropped (with `FORCE`) afterwards.
///
/// Named `stratum_bench_*` rather than taken from `stratum_testkit::TestDb`, whose
/// `stratum_t_*` databases `make test` drops on start: a concurrent test run must not pull
/// the database out from under a benchmark. `stratum serve` migrates it on start.
pub struct BenchDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl BenchDb {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl BenchDb {
    /// Creates an empty database on the test cluster (`STRATUM_TEST_DATABASE_URL`).
    pub async fn create() -> Result<Self> {
        let server = stratum_testkit::server_url();
        let server = server.trim_end_matches('/');
        let name = format!("stratum_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&format!("{server}/postgres")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(Self {
            url: format!("{server}/{name}"),
            name,
        })
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = stratum_testkit::server_url();
        // Drop may run inside the runtime; a thread of its own can block on another one.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let url = format!("{}/postgres", server.trim_end_matches('/'));
                if let Ok(admin) = connect(&url).await {
                    let _dropped = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _joined = handle.join();
    }
}

/// How the process under test is configured.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `STRATUM_WORKER_CONCURRENCY` (`None`: unset, the binary's default).
    pub concurrency: Option<u32>,
    /// `STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT` (`None`: unset, the binary's default).
    pub per_endpoint: Option<u32>,
    /// `serve --no-worker`.
    pub no_worker: bool,
    /// Anything else.
    pub extra_env: Vec<(String, String)>,
}

impl ServerOpts {
    /// One line for the report.
    pub fn describe(&self) -> String {
        let setting = |v: Option<u32>| v.map_or("(default)".to_owned(), |v| v.to_string());
        let mut s = format!(
            "stratum serve{}  STRATUM_WORKER_CONCURRENCY={} STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT={}",
            if self.no_worker { " --no-worker" } else { "" },
            setting(self.concurrency),
            setting(self.per_endpoint)
        );
        for (k, v) in &self.extra_env {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// The running `stratum serve` process; killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts `stratum serve` on `db` and waits for `/health`.
    pub async fn start(db: &BenchDb, opts: &ServerOpts) -> Result<Self> {
        let mut me = Self::spawn(db, opts, "serve")?;
        me.wait_healthy().await?;
        Ok(me)
    }

    /// Starts `stratum worker` on `db` (its HTTP port on a free port) without waiting.
    pub fn spawn_worker(db: &BenchDb, opts: &ServerOpts) -> Result<Self> {
        Self::spawn(db, opts, "worker")
    }

    fn spawn(db: &BenchDb, opts: &ServerOpts, subcommand: &str) -> Result<Self> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(binary());
        cmd.arg(subcommand);
        if opts.no_worker && subcommand == "serve" {
            cmd.arg("--no-worker");
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("STRATUM_BIND", format!("127.0.0.1:{port}"))
            .env("STRATUM_WORKER_BIND", format!("127.0.0.1:{port}"))
            .env("STRATUM_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("STRATUM_ADMIN_API_KEY", ADMIN)
            .env("STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .env("STRATUM_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(c) = opts.concurrency {
            cmd.env("STRATUM_WORKER_CONCURRENCY", c.to_string());
        }
        if let Some(p) = opts.per_endpoint {
            cmd.env("STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", p.to_string());
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p stratum-server`, or set STRATUM_BIN)",
                binary().display()
            )
        })?;
        Ok(Self { child, base })
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = http_client()?;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("stratum exited early: {status}");
            }
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("stratum did not become healthy within 60 s")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An API client for it with the admin key.
    pub fn api(&self) -> Result<Api> {
        Ok(Api {
            client: http_client()?,
            base: format!("{}/api/v1", self.base),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pooled HTTP/1.1 keep-alive client (rustls with ring, though only `http://` is used).
pub fn http_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// The API of the process under test, called with the admin key.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// Sends `method path` with an optional JSON body; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", ADMIN);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }

    /// `POST path body`, expecting `expect`; returns the body.
    pub async fn post(&self, path: &str, body: &Value, expect: u16) -> Result<Value> {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        if status != expect {
            bail!("POST {path} answered {status} (expected {expect}): {v}");
        }
        Ok(v)
    }

    /// Creates a tenant; returns its id.
    pub async fn create_tenant(&self, slug: &str) -> Result<String> {
        let v = self
            .post(
                "/tenants",
                &serde_json::json!({"name": format!("Bench {slug}"), "slug": slug}),
                201,
            )
            .await?;
        id_of(&v)
    }

    /// Creates a webhook on `url` for `events` (global when `tenant_id` is none); returns its id.
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[&str],
        tenant_id: Option<&str>,
    ) -> Result<String> {
        let mut body = serde_json::json!({"url": url, "events": events});
        if let Some(t) = tenant_id {
            body["tenant_id"] = Value::String(t.to_owned());
        }
        let v = self.post("/webhooks", &body, 201).await?;
        id_of(&v)
    }

    /// Creates `n` webhooks, `parallel` at a time; `url(i)` names the i-th target.
    pub async fn create_webhooks(
        &self,
        n: usize,
        parallel: usize,
        events: &[&str],
        url: impl Fn(usize) -> String,
    ) -> Result<Vec<String>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let urls: Vec<String> = (0..n).map(url).collect();
        stream::iter(urls)
            .map(|u| async move { self.create_webhook(&u, events, None).await })
            .buffered(parallel.max(1))
            .try_collect()
            .await
    }
}

fn id_of(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no id in {v}"))
}

/// Seconds since the Unix epoch, as PostgreSQL's `extract(epoch …)` gives them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One bigint from a query that returns one row of one column.
pub async fn query_i64(db: &tokio_postgres::Client, q: &str) -> Result<i64> {
    let row = db.query_one(q, &[]).await.with_context(|| q.to_owned())?;
    Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(0))
}

/// One double from a query that returns one row of one column.
pub async fn query_f64(db: &tokio_postgres::Client, q: &str) -> Result<Option<f64>> {
    let row = db.query_one(q, &[]).await.with_context(|| q.to_owned())?;
    Ok(row.try_get::<_, Option<f64>>(0)?)
}

/// Transactions committed so far in the connected database (`pg_stat_database`; PostgreSQL
/// publishes these counters with up to a second's delay).
pub async fn xact_commits(db: &tokio_postgres::Client) -> Result<i64> {
    query_i64(
        db,
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
}

/// Waits until `q` (one bigint) reaches `target`, polling every `every`, for at most `timeout`.
pub async fn wait_count(
    db: &tokio_postgres::Client,
    q: &str,
    target: i64,
    every: Duration,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if query_i64(db, q).await? >= target {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

/// Resident set size of `pid` in KiB (`VmRSS`), and its high-water mark (`VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Clock ticks per second of `/proc/*/stat`; 100 on every mainstream Linux build.
const CLK_TCK: f64 = 100.0;

/// user + system CPU seconds of one process (all its threads).
pub fn proc_cpu_secs(pid: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / CLK_TCK))
}

/// CPU seconds used so far by the process under test, by the PostgreSQL backends serving
/// its database, by the rest of the cluster (WAL writer, checkpointer, other databases:
/// other people's work on a shared machine shows up here), and by this benchmark (receiver
/// and load generator), plus the machine's busy and total CPU seconds from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    /// The `stratum` process.
    pub stratum: f64,
    /// Backends connected to the benchmark's database (`postgres: user <db> host state`).
    pub postgres: f64,
    /// Every other `postgres` process.
    pub postgres_other: f64,
    /// This process.
    pub bench: f64,
    /// Machine busy time, all cores.
    pub machine_busy: f64,
    /// Machine time, all cores.
    pub machine_total: f64,
}

impl CpuSnapshot {
    /// Reads it now; `db` is the benchmark's database name.
    pub fn take(stratum_pid: u32, db: &str) -> Self {
        let needle = format!(" {db} ");
        let mut s = Self {
            stratum: proc_cpu_secs(&stratum_pid.to_string())
                .map(|(_, c)| c)
                .unwrap_or(0.0),
            bench: proc_cpu_secs("self").map(|(_, c)| c).unwrap_or(0.0),
            ..Self::default()
        };
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str() else { continue };
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((comm, secs)) = proc_cpu_secs(pid) {
                    if comm == "postgres" {
                        let cmdline =
                            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        if String::from_utf8_lossy(&cmdline).contains(&needle) {
                            s.postgres += secs;
                        } else {
                            s.postgres_other += secs;
                        }
                    }
                }
            }
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
                s.machine_total = total / CLK_TCK;
                s.machine_busy = (total - idle) / CLK_TCK;
            }
        }
        s
    }

    /// Prints how the CPU time between `self` and `later` was spent over `wall`.
    pub fn report(&self, later: &Self, wall: Duration) -> Value {
        let wall_s = wall.as_secs_f64().max(1e-9);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let stratum = later.stratum - self.stratum;
        let postgres = later.postgres - self.postgres;
        let other = later.postgres_other - self.postgres_other;
        let bench = later.bench - self.bench;
        let busy = later.machine_busy - self.machine_busy;
        let total = (later.machine_total - self.machine_total).max(1e-9);
        println!(
            "  CPU over {:.2} s wall ({} cores): stratum {:.2} s ({:.0}% of a core), its postgres backends {:.2} s ({:.0}%), rest of the cluster {:.2} s ({:.0}%), bench+receiver {:.2} s ({:.0}%); machine busy {:.0}% of all cores",
            wall_s,
            cores,
            stratum,
            100.0 * stratum / wall_s,
            postgres,
            100.0 * postgres / wall_s,
            other,
            100.0 * other / wall_s,
            bench,
            100.0 * bench / wall_s,
            100.0 * busy / total
        );
        serde_json::json!({
            "cpu_stratum_core_pct": round1(100.0 * stratum / wall_s),
            "cpu_postgres_core_pct": round1(100.0 * postgres / wall_s),
            "cpu_postgres_other_core_pct": round1(100.0 * other / wall_s),
            "cpu_bench_core_pct": round1(100.0 * bench / wall_s),
            "cpu_machine_busy_pct": round1(100.0 * busy / total),
        })
    }
}

/// `x` rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Percentiles (nearest rank) of samples in ms; `None` when there are none.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Minimum.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 95th.
    pub p95: f64,
    /// 99th.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Computes them; infinite samples (never arrived) sort last.
    pub fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let mean = if finite.is_empty() {
            f64::INFINITY
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        Some(Self {
            n: v.len(),
            min: v[0],
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
            mean,
        })
    }

    /// `label: p50 … p95 … p99 … (min … max … mean … n=…)`.
    pub fn line(&self, label: &str) -> String {
        format!(
            "  {label:<34} p50 {:>9}  p95 {:>9}  p99 {:>9}   (min {}, max {}, mean {}, n={})",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.min),
            ms(self.max),
            ms(self.mean),
            self.n
        )
    }

    /// As JSON numbers (ms; `null` for never).
    pub fn json(&self) -> Value {
        let f = |x: f64| {
            if x.is_finite() {
                serde_json::json!(round3(x))
            } else {
                Value::Null
            }
        };
        serde_json::json!({"p50_ms": f(self.p50), "p95_ms": f(self.p95), "p99_ms": f(self.p99),
                           "max_ms": f(self.max), "n": self.n})
    }
}

/// A duration in ms, human-sized.
pub fn ms(x: f64) -> String {
    if !x.is_finite() {
        "never".to_owned()
    } else if x.abs() >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else {
        format!("{x:.2} ms")
    }
}

/// Prints the final one-line JSON summary of a scenario: `{"scenario":"…",…}`.
pub fn summary(scenario: &str, fields: Value) {
    let rest = fields.to_string();
    let rest = rest.strip_prefix('{').unwrap_or("}");
    let sep = if rest == "}" { "" } else { "," };
    println!(
        "{{\"scenario\":{}{sep}{rest}",
        Value::String(scenario.to_owned())
    );
}
