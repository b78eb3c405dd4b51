//! A TCP relay to the test server that loses the connection around one `COMMIT`: the
//! primary going away while a client waits for its commit's answer. Tests point a pool at
//! [`CommitCutter::url`], [`arm`](CommitCutter::arm) it, and check afterwards that the
//! `COMMIT` met it ([`CommitCutter::met`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to the next `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// Forward it like everything else.
    Pass = 0,
    /// Forward it, let the server commit, then close before its answer comes back.
    AfterCommit = 1,
    /// Close instead of forwarding it: the server rolls back.
    BeforeCommit = 2,
}

/// The relay; it runs until the runtime ends.
pub struct CommitCutter {
    mode: Arc<AtomicU8>,
    port: u16,
    authority: String,
}

/// `host:port` of the test server.
fn server_authority() -> String {
    let server = crate::server_url();
    server
        .rsplit('@')
        .next()
        .unwrap_or(&server)
        .trim_start_matches("postgres://")
        .trim_end_matches('/')
        .to_owned()
}

impl CommitCutter {
    /// Starts a relay on a free loopback port to the test server.
    pub async fn start() -> std::io::Result<Self> {
        let authority = server_authority();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(Cut::Pass as u8));
        let (upstream, shared) = (authority.clone(), mode.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(relay(inbound, upstream.clone(), shared.clone()));
            }
        });
        Ok(Self {
            mode,
            port,
            authority,
        })
    }

    /// `db_url` (a database on the test server) through the relay.
    pub fn url(&self, db_url: &str) -> String {
        db_url.replace(&self.authority, &format!("127.0.0.1:{}", self.port))
    }

    /// Sets what happens to the next `COMMIT`.
    pub fn arm(&self, cut: Cut) {
        self.mode.store(cut as u8, Ordering::SeqCst);
    }

    /// Whether the armed cut has happened (the relay is back to passing everything).
    pub fn met(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == Cut::Pass as u8
    }
}

async fn relay(inbound: TcpStream, upstream: String, mode: Arc<AtomicU8>) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    let back = tokio::spawn(async move {
        let _closed = tokio::io::copy(&mut si, &mut co).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    // The name of this connection's prepared COMMIT, once it was parsed.
    let mut prepared: Option<Vec<u8>> = None;
    loop {
        let n = match ci.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Some(name) = parsed_commit(chunk) {
            prepared = Some(name);
        }
        let m = mode.load(Ordering::SeqCst);
        if m != Cut::Pass as u8 && is_commit(chunk, prepared.as_deref()) {
            mode.store(Cut::Pass as u8, Ordering::SeqCst);
            if m == Cut::AfterCommit as u8 {
                // The answer is dropped; the server gets the time to commit.
                back.abort();
                if so.write_all(chunk).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            back.abort();
            return;
        }
        if so.write_all(chunk).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// The statement name of a `Parse` message for `COMMIT` in `chunk` (`'P'`, a length of
/// four bytes, the name, a NUL, the text, a NUL).
fn parsed_commit(chunk: &[u8]) -> Option<Vec<u8>> {
    (0..chunk.len().saturating_sub(5))
        .filter(|&k| chunk[k] == b'P')
        .find_map(|k| {
            let rest = &chunk[k + 5..];
            let end = rest.iter().position(|&b| b == 0)?;
            rest[end + 1..]
                .starts_with(b"COMMIT\0")
                .then(|| rest[..end].to_vec())
        })
}

/// Whether `chunk` carries a COMMIT: as text (a simple query or a `Parse`), or as a `Bind`
/// of the connection's prepared COMMIT (`'B'`, a length, the unnamed portal's NUL, the
/// statement name, a NUL).
fn is_commit(chunk: &[u8], prepared: Option<&[u8]>) -> bool {
    if chunk.windows(6).any(|w| w == b"COMMIT") {
        return true;
    }
    let Some(name) = prepared else {
        return false;
    };
    (0..chunk.len().saturating_sub(6)).any(|k| {
        chunk[k] == b'B'
            && chunk[k + 5] == 0
            && chunk[k + 6..].starts_with(name)
            && chunk.get(k + 6 + name.len()) == Some(&0)
    })
}
