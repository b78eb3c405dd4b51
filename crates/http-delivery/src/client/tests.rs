use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

/// What the hand-written receiver answers.
#[derive(Clone)]
enum Reply {
    /// These exact bytes, then close.
    Bytes(Vec<u8>),
    /// Nothing, ever.
    Never,
    /// A chunked 200 whose body never ends.
    Endless,
}

struct Receiver {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<String>,
}

impl Receiver {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn receiver(reply: Reply) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, requests) = mpsc::unbounded_channel();
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(socket, reply.clone(), tx.clone()));
        }
    });
    Receiver {
        port,
        connections,
        requests,
    }
}

async fn handle(mut socket: TcpStream, reply: Reply, tx: mpsc::UnboundedSender<String>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let _ = tx.send(request);
    match reply {
        Reply::Bytes(bytes) => {
            let _ = socket.write_all(&bytes).await;
            let _ = socket.shutdown().await;
        }
        Reply::Never => tokio::time::sleep(Duration::from_secs(600)).await,
        Reply::Endless => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("1000\r\n{}\r\n", "z".repeat(4096));
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        }
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) as text.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn response(status: &str, headers: &[&str], body: &[u8]) -> Reply {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Bytes(bytes)
}

fn config(allow_private: bool) -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        allow_private,
        user_agent: "Stratum-Webhooks/test".to_owned(),
        max_idle_per_host: 2,
    }
}

fn client(allow_private: bool) -> ReqwestDeliveryClient {
    ReqwestDeliveryClient::new(config(allow_private)).unwrap()
}

fn post(url: String) -> OutgoingRequest {
    OutgoingRequest {
        url,
        headers: vec![("X-Test".to_owned(), "yes".to_owned())],
        body: br#"{"id":"e1"}"#.to_vec(),
        attempt: 1,
        trace_context: None,
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

#[tokio::test]
async fn ok_response_gives_status_and_excerpt() {
    let r = receiver(response("200 OK", &[], b"thanks")).await;
    let out = client(true).send(post(r.url("/hook"))).await;
    assert_eq!(out.status, Some(200));
    assert_eq!(out.body_excerpt.as_deref(), Some("thanks"));
    assert_eq!(out.error, None);
    assert_eq!(out.retry_after_secs, None);
}

#[tokio::test]
async fn empty_body_has_no_excerpt() {
    let r = receiver(response("204 No Content", &[], b"")).await;
    let out = client(true).send(post(r.url("/"))).await;
    assert_eq!(out.status, Some(204));
    assert_eq!(out.body_excerpt, None);
}

#[tokio::test]
async fn headers_and_body_arrive() {
    let mut r = receiver(response("200 OK", &[], b"")).await;
    let mut request = post(r.url("/hook?x=1"));
    // Callers cannot override the content type or the agent.
    request
        .headers
        .push(("Content-Type".to_owned(), "text/plain".to_owned()));
    request
        .headers
        .push(("User-Agent".to_owned(), "curl/8".to_owned()));
    let out = client(true).send(request).await;
    assert_eq!(out.status, Some(200));
    let seen = drain(&mut r.requests);
    assert_eq!(seen.len(), 1);
    let text = seen[0].to_ascii_lowercase();
    assert!(text.starts_with("post /hook?x=1 http/1.1\r\n"), "{text}");
    assert!(text.contains("\r\nx-test: yes\r\n"), "{text}");
    assert!(
        text.contains("\r\ncontent-type: application/json\r\n"),
        "{text}"
    );
    assert!(!text.contains("text/plain"), "{text}");
    assert!(
        text.contains("\r\nuser-agent: stratum-webhooks/test\r\n"),
        "{text}"
    );
    assert!(!text.contains("curl/8"), "{text}");
    assert!(seen[0].ends_with("\r\n\r\n{\"id\":\"e1\"}"), "{}", seen[0]);
}

#[tokio::test]
async fn retry_after_is_reported() {
    let r = receiver(response(
        "503 Service Unavailable",
        &["Retry-After: 7"],
        b"busy",
    ))
    .await;
    let out = client(true).send(post(r.url("/"))).await;
    assert_eq!(out.status, Some(503));
    assert_eq!(out.retry_after_secs, Some(7));
    assert_eq!(out.body_excerpt.as_deref(), Some("busy"));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let mut elsewhere = receiver(response("200 OK", &[], b"")).await;
    let location = format!("Location: {}", elsewhere.url("/elsewhere"));
    let mut r = receiver(response("302 Found", &[&location], b"")).await;
    let out = client(true).send(post(r.url("/start"))).await;
    assert_eq!(out.status, Some(302));
    assert_eq!(out.error, None);
    let seen = drain(&mut r.requests);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("POST /start "), "{}", seen[0]);
    // Following would have happened inside `send`, so it would be visible by now.
    assert!(drain(&mut elsewhere.requests).is_empty());
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn silent_receiver_times_out() {
    let r = receiver(Reply::Never).await;
    let client = ReqwestDeliveryClient::new(ClientConfig {
        timeout: Duration::from_millis(300),
        ..config(true)
    })
    .unwrap();
    let out = client.send(post(r.url("/"))).await;
    assert_eq!(out.status, None);
    let error = out.error.unwrap();
    assert!(error.contains("timeout"), "{error}");
    assert!(out.duration_ms >= 300, "{}", out.duration_ms);
}

#[tokio::test]
async fn huge_body_is_read_only_up_to_the_cap() {
    let body = vec![b'a'; 1024 * 1024];
    let r = receiver(response("200 OK", &[], &body)).await;
    let out = client(true).send(post(r.url("/"))).await;
    assert_eq!(out.status, Some(200));
    assert_eq!(out.error, None);
    assert_eq!(out.body_excerpt.unwrap(), "a".repeat(EXCERPT_BYTES));
}

#[tokio::test]
async fn endless_body_does_not_hold_the_attempt() {
    let r = receiver(Reply::Endless).await;
    let client = ReqwestDeliveryClient::new(ClientConfig {
        timeout: Duration::from_secs(600),
        ..config(true)
    })
    .unwrap();
    // Without the cap this would run into the 600 s client timeout; the margin is huge,
    // so this cannot flake.
    let out = tokio::time::timeout(Duration::from_secs(60), client.send(post(r.url("/"))))
        .await
        .expect("the body read must stop at the cap");
    assert_eq!(out.status, Some(200));
    assert_eq!(out.body_excerpt.unwrap(), "z".repeat(EXCERPT_BYTES));
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = client(true)
        .send(post(format!("http://127.0.0.1:{port}/")))
        .await;
    assert_eq!(out.status, None);
    let error = out.error.unwrap();
    assert!(error.starts_with("connect error"), "{error}");
}

#[tokio::test]
async fn private_targets_are_refused_without_connecting() {
    let mut r = receiver(response("200 OK", &[], b"")).await;
    let port = r.port;
    let guarded = client(false);
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://LOCALHOST.:{port}/"),
        format!("http://api.localhost:{port}/"),
    ] {
        let out = guarded.send(post(url.clone())).await;
        assert_eq!(out.status, None, "{url}");
        assert!(
            out.refused,
            "{url}: a blocked target is refused, not retried"
        );
        let error = out.error.unwrap();
        assert!(error.starts_with("blocked target"), "{url}: {error}");
    }
    // A permitted request queues behind any connection the refused ones might have made,
    // so by the time it is answered the count is final.
    let out = client(true).send(post(r.url("/"))).await;
    assert_eq!(out.status, Some(200));
    assert_eq!(r.connections.load(Ordering::SeqCst), 1);
    assert_eq!(drain(&mut r.requests).len(), 1);
}

#[tokio::test]
async fn plain_http_is_refused_at_delivery_time_in_production_mode() {
    // A public name over http://: what a process allowing private targets may have stored.
    let out = client(false)
        .send(post("http://receiver.example/hook".to_owned()))
        .await;
    assert_eq!(out.status, None);
    assert!(out.refused);
    assert_eq!(
        out.error.as_deref(),
        Some("refused target: url must use https")
    );
}

fn lookup_to(addr: SocketAddr) -> Lookup {
    Arc::new(move |_| Box::pin(async move { Ok(vec![addr]) }))
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused() {
    let mut r = receiver(response("200 OK", &[], b"")).await;
    let target: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let guarded = ReqwestDeliveryClient::with_lookup(config(false), lookup_to(target)).unwrap();
    let out = guarded
        .send(post(format!("https://rebind.example:{}/", r.port)))
        .await;
    assert_eq!(out.status, None);
    assert!(out.refused);
    assert_eq!(
        out.error.as_deref(),
        Some("blocked target: host resolves to a loopback address (127.0.0.1)")
    );
    let out = client(true).send(post(r.url("/"))).await;
    assert_eq!(out.status, Some(200));
    assert_eq!(r.connections.load(Ordering::SeqCst), 1);
    assert_eq!(drain(&mut r.requests).len(), 1);
}

#[tokio::test]
async fn the_client_connects_to_the_addresses_the_resolver_checked() {
    let mut r = receiver(response("200 OK", &[], b"here")).await;
    let target: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let open = ReqwestDeliveryClient::with_lookup(config(true), lookup_to(target)).unwrap();
    let out = open
        .send(post(format!("http://receiver.example:{}/hook", r.port)))
        .await;
    assert_eq!(out.status, Some(200), "{:?}", out.error);
    assert_eq!(out.body_excerpt.as_deref(), Some("here"));
    let seen = drain(&mut r.requests);
    assert_eq!(seen.len(), 1);
    assert!(seen[0]
        .to_ascii_lowercase()
        .contains(&format!("\r\nhost: receiver.example:{}\r\n", r.port)));
}

#[tokio::test]
async fn bad_input_is_an_error_not_a_panic() {
    let c = client(true);
    let out = c.send(post("not a url".to_owned())).await;
    assert!(out.error.unwrap().starts_with("invalid url"));
    let out = c.send(post("ftp://example.com/".to_owned())).await;
    assert!(out.error.unwrap().starts_with("invalid url"));
    let mut request = post("http://127.0.0.1:9/".to_owned());
    request
        .headers
        .push(("bad name".to_owned(), "x".to_owned()));
    let out = c.send(request).await;
    assert!(out.error.unwrap().contains("invalid header name"));
    let mut request = post("http://127.0.0.1:9/".to_owned());
    request
        .headers
        .push(("X-Ok".to_owned(), "line\nbreak".to_owned()));
    let out = c.send(request).await;
    assert!(out.error.unwrap().contains("invalid value"));
    let bad_agent = ReqwestDeliveryClient::new(ClientConfig {
        user_agent: "a\nb".to_owned(),
        ..config(true)
    });
    assert!(matches!(bad_agent, Err(ClientBuildError::UserAgent)));
}

#[test]
fn excerpt_cuts_on_a_char_boundary() {
    assert_eq!(excerpt(b""), None);
    assert_eq!(excerpt(b"ok").as_deref(), Some("ok"));
    let mut bytes = vec![b'a'; EXCERPT_BYTES - 1];
    bytes.extend_from_slice("é".as_bytes());
    let text = excerpt(&bytes).unwrap();
    assert_eq!(text, "a".repeat(EXCERPT_BYTES - 1));
    let text = excerpt(&[0xff; EXCERPT_BYTES + UTF8_SLACK]).unwrap();
    assert!(text.len() <= EXCERPT_BYTES);
    assert!(text.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
}

#[test]
fn retry_after_values() {
    // 1994-11-06T08:49:37Z
    let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let before = date - Duration::from_secs(120);
    assert_eq!(parse_retry_after("7", before), Some(7));
    assert_eq!(parse_retry_after(" 120 ", before), Some(120));
    assert_eq!(parse_retry_after("0", before), Some(0));
    assert_eq!(
        parse_retry_after("99999999999999999999999", before),
        Some(u64::MAX)
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", before),
        Some(120)
    );
    assert_eq!(
        parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", before),
        Some(120)
    );
    assert_eq!(
        parse_retry_after("Sun Nov  6 08:49:37 1994", before),
        Some(120)
    );
    assert_eq!(
        parse_retry_after(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            date + Duration::from_secs(5)
        ),
        Some(0)
    );
    for junk in [
        "",
        "-1",
        "1.5",
        "soon",
        "Sun, 06 Nov 1994 08:49:37 PST",
        "Sun, 32 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(parse_retry_after(junk, before), None, "{junk:?}");
    }
}

#[test]
fn http_dates() {
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(
        parse_http_date("Sun Nov  6 08:49:37 1994"),
        Some(784_111_777)
    );
    assert_eq!(
        parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
        Some(1_835_438_400)
    );
    // RFC 850 two-digit years: 70–99 are 19xx, the rest 20xx.
    assert_eq!(
        parse_http_date("Tuesday, 29-Feb-28 12:00:00 GMT"),
        Some(1_835_438_400)
    );
}
