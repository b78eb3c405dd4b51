//! A small HTTP/1.1 keep-alive webhook receiver on its own runtime, built to never be
//! the bottleneck: no allocation per request beyond the connection buffer, a counter, and
//! an optional per-scenario hook that sees the path and body.

use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the receiver does with one request; returns how long to wait before answering.
pub type Hook = Arc<dyn Fn(&str, &[u8], Instant) -> Option<Duration> + Send + Sync>;

/// Counters shared with the scenario.
pub struct RecvStats {
    /// Where every instant below is measured from.
    pub epoch: Instant,
    /// Requests answered (or being answered).
    pub count: AtomicU64,
    /// Nanoseconds since `epoch` of the first request; `u64::MAX` until one arrives.
    pub first_ns: AtomicU64,
    /// Nanoseconds since `epoch` of the latest request.
    pub last_ns: AtomicU64,
}

impl RecvStats {
    /// Requests so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The instant of the first request, if any.
    pub fn first(&self) -> Option<Instant> {
        match self.first_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    /// The instant of the latest request, if any.
    pub fn last(&self) -> Option<Instant> {
        self.first()?;
        Some(self.epoch + Duration::from_nanos(self.last_ns.load(Ordering::Acquire)))
    }
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its counters.
    pub stats: Arc<RecvStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// Starts a receiver on a runtime of `threads` threads; `hook` runs on every request.
    pub fn start(threads: usize, epoch: Instant, hook: Option<Hook>) -> Result<Self> {
        let std_listener = StdListener::bind("127.0.0.1:0").context("binding the receiver")?;
        let port = std_listener.local_addr()?.port();
        std_listener.set_nonblocking(true)?;
        let stats = Arc::new(RecvStats {
            epoch,
            count: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("receiver")
            .enable_all()
            .build()
            .context("building the receiver runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("receiver-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let accept = async {
                        loop {
                            let Ok((sock, _)) = listener.accept().await else {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            };
                            let _ = sock.set_nodelay(true);
                            let st = Arc::clone(&st);
                            let hook = hook.clone();
                            tokio::spawn(async move {
                                let _ = serve_conn(sock, st, hook).await;
                            });
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
                // Connections still sleeping (the slow receiver) are dropped with the runtime.
                rt.shutdown_background();
            })
            .context("spawning the receiver thread")?;
        Ok(Self {
            base: format!("http://127.0.0.1:{port}"),
            stats,
            stop: Some(stop),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `content-length` of a request head; `None` if the head has no usable length.
fn content_length(head: &[u8]) -> Option<usize> {
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if name.eq_ignore_ascii_case(b"content-length") {
            return std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok();
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked bodies are not something our sender produces; refuse rather than guess.
            return None;
        }
    }
    Some(0)
}

async fn serve_conn(
    mut sock: tokio::net::TcpStream,
    st: Arc<RecvStats>,
    hook: Option<Hook>,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        // Read until a whole request (head + body) is buffered.
        let (head_end, total) = loop {
            if let Some(end) = find_header_end(&buf) {
                let len = content_length(&buf[..end]).context("no content-length")?;
                if buf.len() >= end + len {
                    break (end, end + len);
                }
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let now = Instant::now();
        let ns = u64::try_from(now.duration_since(st.epoch).as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = st
            .first_ns
            .compare_exchange(u64::MAX, ns, Ordering::AcqRel, Ordering::Acquire);
        st.last_ns.fetch_max(ns, Ordering::AcqRel);
        let delay = match &hook {
            Some(h) => {
                let path = request_path(&buf[..head_end]);
                h(path, &buf[head_end..total], now)
            }
            None => None,
        };
        st.count.fetch_add(1, Ordering::AcqRel);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        buf.drain(..total);
        sock.write_all(RESPONSE).await?;
    }
}

/// The path of the request line, without the leading `/`.
fn request_path(head: &[u8]) -> &str {
    let line_end = head.iter().position(|b| *b == b'\r').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).unwrap_or("");
    line.split(' ')
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let head = b"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(find_header_end(head), Some(head.len()));
        assert_eq!(content_length(head), Some(12));
        assert_eq!(request_path(head), "a/b");
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(content_length(chunked), None);
    }
}
