//! The client against a live `stratum serve` (`make test-clients` starts one and sets
//! `STRATUM_URL` and `STRATUM_ADMIN_KEY`).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::TryStreamExt;
use stratum_client::{types, webhooks::Webhook, AuditLogQuery, Error, RetryPolicy, Stratum};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make test-clients`"))
}

fn client() -> Stratum {
    Stratum::new(&env("STRATUM_URL"), &env("STRATUM_ADMIN_KEY")).unwrap()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

async fn tenant(s: &Stratum, slug: &str, parent: Option<uuid::Uuid>) -> types::Tenant {
    let mut b = types::CreateTenant::builder().name(slug).slug(slug);
    if let Some(p) = parent {
        b = b.parent_id(p);
    }
    s.create_tenant(b.try_into().unwrap()).await.unwrap()
}

/// One received webhook request.
struct Received {
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on loopback that answers 200 and hands each request over.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some((headers, body)) = read_request(&mut conn).await else {
                    return;
                };
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(Received { headers, body });
            });
        }
    });
    (url, rx)
}

/// Reads one HTTP/1.1 request (head and a `content-length` body) from `conn`.
async fn read_request(conn: &mut TcpStream) -> Option<(http::HeaderMap, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_len, body_len) = loop {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            break (end + 4, len);
        }
    };
    while buf.len() < head_len + body_len {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_len - 4]).to_string();
    let mut headers = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                http::HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
    }
    Some((headers, buf[head_len..head_len + body_len].to_vec()))
}

/// A loopback proxy to the server that answers the first connections' requests itself with
/// the statuses of `answers` (429 with `Retry-After: 1`, others without) and forwards the
/// rest. Returns its base URL and the `Idempotency-Key` of each request it answered.
async fn throttling_proxy(
    answers: Vec<u16>,
) -> (String, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let upstream = env("STRATUM_URL").trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = keys.clone();
    tokio::spawn(async move {
        let mut accepted = 0usize;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            accepted += 1;
            let answer = answers.get(accepted - 1).copied();
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(status) = answer else {
                    let mut server = TcpStream::connect(&upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut server).await;
                    return;
                };
                let Some((headers, _)) = read_request(&mut conn).await else {
                    return;
                };
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push(key);
                let body = r#"{"error":{"code":"RATE_LIMITED","message":"slow down"}}"#;
                let retry_after = if status == 429 {
                    "retry-after: 1\r\n"
                } else {
                    ""
                };
                let answer = format!(
                    "HTTP/1.1 {status} Busy\r\ncontent-type: application/json\r\n{retry_after}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (base, keys)
}

/// A loopback proxy to the server that lets the server answer the first `resets` connections
/// and then resets them instead of passing the answer on: the client sees a broken
/// connection for a request the server did carry out. Returns its base URL and the number of
/// connections it reset after the server had answered.
async fn resetting_proxy(resets: usize) -> (String, Arc<AtomicUsize>) {
    let upstream = env("STRATUM_URL").trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    tokio::spawn(async move {
        let mut accepted = 0usize;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            accepted += 1;
            let upstream = upstream.clone();
            let counter = counter.clone();
            let reset = accepted <= resets;
            tokio::spawn(async move {
                let mut server = TcpStream::connect(&upstream).await.unwrap();
                if !reset {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut server).await;
                    return;
                }
                let (mut server_read, mut server_write) = server.split();
                let (mut client_read, _client_write) = conn.split();
                let forward = tokio::io::copy(&mut client_read, &mut server_write);
                let mut answer = [0u8; 1];
                tokio::select! {
                    _ = forward => return,
                    n = server_read.read(&mut answer) => {
                        if !matches!(n, Ok(1)) { return; }
                    }
                }
                // The server has answered; the client gets a reset instead.
                // A zero linger makes the close a reset (and never blocks).
                #[allow(deprecated)]
                conn.set_linger(Some(Duration::ZERO)).unwrap();
                drop(conn);
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (base, done)
}

#[tokio::test]
async fn tenant_tree_webhook_and_a_verified_delivery() {
    let s = client();
    let root = tenant(&s, &unique("rs_root"), None).await;
    let child = tenant(&s, &unique("rs_child"), Some(root.id)).await;
    let grandchild = tenant(&s, &unique("rs_grand"), Some(child.id)).await;
    assert_eq!(grandchild.depth, 2);
    assert_eq!(grandchild.parent_id, Some(child.id));

    let (url, mut rx) = receiver().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = s
        .create_webhook(
            types::CreateWebhook::builder()
                .url(url.as_str())
                .events(vec![types::SubscribableEvent::TenantCreated])
                .tenant_id(root.id)
                .secret(Some(types::CreateWebhookSecret::try_from(secret).unwrap()))
                .try_into()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        hook.secret.is_none(),
        "a secret the caller chose is not echoed"
    );

    let leaf = tenant(&s, &unique("rs_leaf"), Some(grandchild.id)).await;
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no delivery within a minute")
        .unwrap();
    Webhook::new(secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("the delivery verifies with the webhook's secret");
    assert!(
        Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGwh")
            .unwrap()
            .verify(&got.body, &got.headers)
            .is_err(),
        "another secret does not verify it"
    );
    let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(event["event"], "tenant.created");
    assert_eq!(event["data"]["id"], leaf.id.to_string());

    let deliveries: Vec<_> = s
        .deliveries(hook.id, None, Some(1))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        got.headers["webhook-id"].to_str().unwrap(),
        deliveries[0].id.to_string()
    );

    // The tenant iterator sees each of the four once.
    let ours: HashSet<_> = [root.id, child.id, grandchild.id, leaf.id].into();
    let mut seen = Vec::new();
    let mut all = std::pin::pin!(s.tenants(Some(2)));
    while let Some(t) = all.try_next().await.unwrap() {
        if ours.contains(&t.id) {
            seen.push(t.id);
        }
    }
    seen.sort();
    let mut want: Vec<_> = ours.into_iter().collect();
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn pages_through_250_audit_entries_once_each() {
    let s = client();
    let t = tenant(&s, &unique("rs_audit"), None).await;
    for i in 0..250 {
        s.put_config(
            t.id,
            &format!("key_{i:03}"),
            types::PutConfig::builder()
                .value(serde_json::json!(i))
                .try_into()
                .unwrap(),
        )
        .await
        .unwrap();
    }
    let entries: Vec<_> = s
        .audit_logs(AuditLogQuery {
            tenant_id: Some(t.id),
            action: Some("config.updated".into()),
            page_size: Some(100),
            ..Default::default()
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(entries.len(), 250);
    let ids: HashSet<_> = entries.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 250, "no entry twice");
    let keys: HashSet<_> = entries.iter().map(|e| e.resource_id.clone()).collect();
    assert_eq!(keys.len(), 250, "every key once");
}

#[tokio::test]
async fn a_conditional_update_loses_the_race() {
    let s = client();
    let t = tenant(&s, &unique("rs_race"), None).await;
    let (_, version) = s.get_tenant(t.id).await.unwrap();
    let version = version.expect("GET returns an ETag");
    let patch = |name: &str| -> types::PatchTenant {
        types::PatchTenant::builder()
            .name(Some(name.parse().unwrap()))
            .try_into()
            .unwrap()
    };
    let (won, new_version) = s
        .update_tenant(t.id, patch("first"), Some(&version))
        .await
        .unwrap();
    assert_eq!(won.name, "first");
    assert_ne!(new_version.as_deref(), Some(version.as_str()));
    match s.update_tenant(t.id, patch("second"), Some(&version)).await {
        Err(Error::PreconditionFailed(e)) => {
            assert_eq!(e.status, 412);
            assert_eq!(e.code, "PRECONDITION_FAILED");
            assert!(e.request_id.is_some());
        }
        other => panic!("expected a precondition failure, got {other:?}"),
    }
    let (now, _) = s.get_tenant(t.id).await.unwrap();
    assert_eq!(now.name, "first", "the loser changed nothing");
}

#[tokio::test]
async fn errors_are_typed() {
    let s = client();
    match s.get_tenant(uuid::Uuid::new_v4()).await {
        Err(Error::Api(e)) => {
            assert_eq!(e.status, 404);
            assert_eq!(e.code, "TENANT_NOT_FOUND");
            assert!(!e.message.is_empty());
            assert!(e.request_id.is_some());
        }
        other => panic!("expected 404, got {other:?}"),
    }
    let slug = unique("rs_dup");
    tenant(&s, &slug, None).await;
    let again = types::CreateTenant::builder().name("x").slug(slug.as_str());
    match s.create_tenant(again.try_into().unwrap()).await {
        Err(Error::Api(e)) => assert_eq!((e.status, e.code.as_str()), (409, "CONFLICT")),
        other => panic!("expected 409, got {other:?}"),
    }
}

#[tokio::test]
async fn a_post_retried_through_connection_resets_creates_once() {
    let (base, resets) = resetting_proxy(2).await;
    let through_proxy = Stratum::new(&base, &env("STRATUM_ADMIN_KEY"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        });
    let slug = unique("rs_retry");
    let created = tenant(&through_proxy, &slug, None).await;
    // Precondition: the server answered twice and the client saw two broken connections.
    assert_eq!(resets.load(Ordering::SeqCst), 2);

    let s = client();
    let creations: Vec<_> = s
        .audit_logs(AuditLogQuery {
            action: Some("tenant.created".into()),
            page_size: Some(100),
            ..Default::default()
        })
        .try_filter(|e| futures::future::ready(e.resource_id == Some(created.id.to_string())))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(creations.len(), 1, "created exactly once");
    let same_slug = s
        .tenants(Some(100))
        .try_filter(|t| futures::future::ready(t.slug == slug))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(same_slug.len(), 1);
    assert_eq!(same_slug[0].id, created.id);

    // Without retries, the same fault is an error: the test can fail.
    let (base, _) = resetting_proxy(1).await;
    let no_retry = Stratum::new(&base, &env("STRATUM_ADMIN_KEY"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        });
    let body = types::CreateTenant::builder()
        .name("x")
        .slug(unique("rs_noretry").as_str());
    assert!(matches!(
        no_retry.create_tenant(body.try_into().unwrap()).await,
        Err(Error::Connection(_))
    ));
}

#[tokio::test]
async fn a_post_answered_429_then_503_is_retried_with_one_idempotency_key() {
    let (base, keys) = throttling_proxy(vec![429, 503]).await;
    let through_proxy = Stratum::new(&base, &env("STRATUM_ADMIN_KEY"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        });
    let slug = unique("rs_throttled");
    let created = tenant(&through_proxy, &slug, None).await;
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "both refusals were seen");
    assert!(keys[0].is_some(), "the POST carries an Idempotency-Key");
    assert_eq!(keys[0], keys[1], "one key for every attempt of the call");
    let (fetched, _) = client().get_tenant(created.id).await.unwrap();
    assert_eq!(fetched.slug, slug);
}

#[tokio::test]
async fn a_post_that_refuses_a_key_is_not_repeated_after_a_reset() {
    let s = client();
    let root = tenant(&s, &unique("rs_unsafe"), None).await;
    let (base, resets) = resetting_proxy(1).await;
    let through_proxy = Stratum::new(&base, &env("STRATUM_ADMIN_KEY")).unwrap();
    // Without a secret the server generates one and refuses an Idempotency-Key: a repeat
    // could create a second webhook, so the client must not repeat it.
    let body = types::CreateWebhook::builder()
        .url("http://127.0.0.1:9/hook")
        .events(vec![types::SubscribableEvent::TenantUpdated])
        .tenant_id(root.id);
    let outcome = through_proxy.create_webhook(body.try_into().unwrap()).await;
    assert_eq!(resets.load(Ordering::SeqCst), 1, "the server answered once");
    assert!(matches!(outcome, Err(Error::Connection(_))), "{outcome:?}");
    let hooks = s
        .call(stratum_client::Replay::Safe, |c, _| {
            c.list_webhooks().tenant_id(root.id).send()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hooks.len(), 1, "created once, not repeated");
}
