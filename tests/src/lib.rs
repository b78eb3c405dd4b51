//! End-to-end harness: runs the real `stratum` binary against a fresh database and a
//! local webhook receiver, and talks to it over HTTP like any client would.

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use stratum_testkit::TestDb;

/// Creates `n` pending deliveries of one `tenant.updated` event each (payload `{"n": i}`) to
/// `webhook_id`, in one statement, and wakes the workers.
pub async fn enqueue(db: &TestDb, webhook_id: &str, n: usize) {
    let webhook = uuid::Uuid::parse_str(webhook_id).unwrap_or_else(|e| panic!("{webhook_id}: {e}"));
    stratum_testkit::fixtures::enqueue(&db.url, webhook, n).await;
    stratum_testkit::sql::exec(&db.url, "NOTIFY stratum_deliveries").await;
}

/// The bootstrap admin key of every process the harness starts.
pub const ADMIN: &str = "sk_e2e_bootstrap_admin_key_0123456789abcdef";
/// The encryption key of every process the harness starts.
pub const ENCRYPTION_KEY: &str = "e2e-encryption-key-0123456789abcdefgh";

/// The `stratum` binary under test: `STRATUM_BIN` if set, otherwise the one
/// `cargo build -p stratum-server --bin stratum` produces from the sources as they are now.
///
/// The harness runs that build itself (once per test process; a no-op when nothing changed),
/// so a test never runs a binary older than the code it tests.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("STRATUM_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_binary().unwrap_or_else(|e| panic!("{e:#}")),
    })
    .clone()
}

/// Builds the `stratum` binary with the cargo that runs the tests and returns the path cargo
/// reports for it (so `CARGO_TARGET_DIR` and the profile are cargo's business, not ours).
fn build_binary() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--package",
            "stratum-server",
            "--bin",
            "stratum",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| {
            format!(
                "running {} build -p stratum-server",
                cargo.to_string_lossy()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`cargo build -p stratum-server --bin stratum` failed ({})",
            out.status
        );
    }
    stratum_executable(&String::from_utf8_lossy(&out.stdout))
        .context("`cargo build -p stratum-server` reported no `stratum` executable")
}

/// The `executable` of the `stratum` binary target in cargo's JSON build messages.
fn stratum_executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "stratum")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running `stratum` process, killed on drop.
pub struct Stratum {
    child: Child,
    /// `http://127.0.0.1:<port>`: the API of `serve`, the operations port of `worker`.
    pub base: String,
}

/// Environment every test process gets: fast retries, private targets allowed.
pub fn default_env(db: &TestDb) -> Vec<(String, String)> {
    env_for_url(&db.url)
}

/// Like [`default_env`], for a database URL of the caller's.
pub fn env_for_url(url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", url),
        ("STRATUM_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("STRATUM_ADMIN_API_KEY", ADMIN),
        ("STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
        ("STRATUM_WEBHOOK_BACKOFF_BASE_MS", "100"),
        ("STRATUM_WEBHOOK_BACKOFF_MAX_MS", "400"),
        ("STRATUM_WEBHOOK_MAX_ATTEMPTS", "3"),
        ("STRATUM_WEBHOOK_TIMEOUT_MS", "2000"),
        ("STRATUM_LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Stratum {
    /// Starts `stratum <args>` with `env`; for `serve` and `worker`, waits until `/health`
    /// answers (a worker's operations port is `STRATUM_WORKER_BIND`, a free port here).
    pub async fn start(args: &[&str], env: &[(String, String)]) -> Result<Self> {
        Self::start_with_stderr(args, env, Stdio::inherit()).await
    }

    /// Like [`start`](Self::start), with the process's log (stderr) written to `log`.
    pub async fn start_logged(
        args: &[&str],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Self::start_with_stderr(args, env, Stdio::from(file)).await
    }

    async fn start_with_stderr(
        args: &[&str],
        env: &[(String, String)],
        stderr: Stdio,
    ) -> Result<Self> {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRATUM_BIND", format!("127.0.0.1:{port}"))
            .env("STRATUM_WORKER_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let mut me = Self { child, base };
        if matches!(args.first(), Some(&"serve") | Some(&"worker")) {
            me.wait_healthy().await?;
        }
        Ok(me)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = client();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("stratum exited early: {status}");
            }
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("stratum did not become healthy")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a graceful exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        self.signal_term();
        self.exited_cleanly(Duration::from_secs(30))
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit; whether it exited with success.
    pub fn exited_cleanly(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Calls the API with the admin key.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let client = client();
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = client
            .request(method.parse()?, url)
            .header("X-API-Key", ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
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
}

impl Drop for Stratum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// How the receiver answers on one path.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200.
    Ok,
    /// Always this status.
    Status(u16),
    /// 500 for the first `n` requests, then 200.
    FailFirst(u32),
    /// Sleeps, then 200.
    Slow(Duration),
    /// 500 for every `n`th request (the `n`th, `2n`th, ...), else 200.
    FailEvery(u32),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path's last segment.
    pub path: String,
    /// Headers, lowercase names.
    pub headers: HashMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// When its head was read.
    pub at: std::time::Instant,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct RecvState {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<HashMap<String, Behaviour>>,
    hits: Mutex<HashMap<String, u32>>,
}

/// A local webhook receiver on its own thread and runtime.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<RecvState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// Starts it.
    pub fn start() -> Self {
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = std_listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = std_listener.set_nonblocking(true);
        let state = Arc::new(RecvState::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let _ = serve_conn(sock, st).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            base: format!("http://127.0.0.1:{port}"),
            state,
            stop: Some(stop),
        }
    }

    /// Sets how `path` answers.
    pub fn set(&self, path: &str, b: Behaviour) {
        if let Ok(mut m) = self.state.behaviour.lock() {
            m.insert(path.to_owned(), b);
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests received on `path`.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `pred` holds over what was received, or the timeout passes.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.received()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A minimal HTTP/1.1 server loop with keep-alive: enough for a webhook receiver.
async fn serve_conn(sock: tokio::net::TcpStream, st: Arc<RecvState>) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let at = std::time::Instant::now();
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let behaviour = st
            .behaviour
            .lock()
            .ok()
            .and_then(|m| m.get(&path).cloned())
            .unwrap_or(Behaviour::Ok);
        let hit = {
            let mut hits = st.hits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let n = hits.entry(path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let status = match behaviour {
            Behaviour::Ok => 200,
            Behaviour::Status(s) => s,
            Behaviour::FailFirst(n) => {
                if hit <= n {
                    500
                } else {
                    200
                }
            }
            Behaviour::Slow(_) => 200,
            Behaviour::FailEvery(n) => {
                if n > 0 && hit % n == 0 {
                    500
                } else {
                    200
                }
            }
        };
        if let Ok(mut rec) = st.received.lock() {
            rec.push(Received {
                path: path.clone(),
                headers,
                body,
                at,
                status,
            });
        }
        if let Behaviour::Slow(d) = behaviour {
            tokio::time::sleep(d).await;
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
        );
        w.write_all(resp.as_bytes()).await?;
    }
}

/// Runs SQL on the test database.
pub async fn sql(url: &str, q: &str) -> Result<()> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut c = AsyncPgConnection::establish(url).await?;
    diesel::sql_query(q).execute(&mut c).await?;
    Ok(())
}

/// A count from the test database; `q` selects one bigint named `n`.
pub async fn count(url: &str, q: &str) -> Result<i64> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = AsyncPgConnection::establish(url).await?;
    let rows: Vec<N> = diesel::sql_query(q).load(&mut c).await?;
    Ok(rows.into_iter().next().map(|r| r.n).unwrap_or(0))
}

/// Text rows from the test database; `q` selects one text column named `t`.
pub async fn texts(url: &str, q: &str) -> Result<Vec<String>> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut c = AsyncPgConnection::establish(url).await?;
    let rows: Vec<T> = diesel::sql_query(q).load(&mut c).await?;
    Ok(rows.into_iter().map(|r| r.t).collect())
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stratum_executable_among_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"stratum_server","kind":["lib"]},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"stratum","kind":["lib"]},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"stratum","kind":["bin"]},"executable":"/t/debug/stratum"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            stratum_executable(&messages),
            Some(PathBuf::from("/t/debug/stratum"))
        );
        assert_eq!(stratum_executable(&messages[..messages.len() / 2]), None);
    }

    #[test]
    fn the_binary_is_built_from_the_current_sources() {
        if std::env::var_os("STRATUM_BIN").is_some() {
            return;
        }
        let bin = binary();
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .expect("the binary exists");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/server/src/main.rs");
        let edited = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .expect("main.rs exists");
        assert!(
            built >= edited,
            "{} is older than {}",
            bin.display(),
            source.display()
        );
    }
}
