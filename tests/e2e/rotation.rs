//! Encryption-key rotation end to end: the real binary rotates through its API, deliveries
//! keep their original signing secrets, restarts are gated on the key, and a replica still
//! on the old key leaves deliveries it cannot sign for one that can.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use stratum_e2e::{
    binary, client, count, default_env, eventually, free_port, sql, Received, Receiver, Stratum,
    TestDb, ADMIN, ENCRYPTION_KEY,
};

const NEW_KEY: &str = "e2e-rotated-encryption-key-0123456789abcdefgh";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `env` with the encryption keys replaced.
fn with_keys(
    env: &[(String, String)],
    current: &str,
    previous: Option<&str>,
) -> Vec<(String, String)> {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("STRATUM_ENCRYPTION_KEY"))
        .cloned()
        .collect();
    env.push(("STRATUM_ENCRYPTION_KEY".into(), current.into()));
    if let Some(p) = previous {
        env.push(("STRATUM_ENCRYPTION_KEY_PREVIOUS".into(), p.into()));
    }
    env
}

/// `env` with the current key and any further readable keys (the README's rolling
/// rotation: `STRATUM_ENCRYPTION_KEY_NEXT` before, `_PREVIOUS` after).
fn with_key_set(
    env: &[(String, String)],
    current: &str,
    previous: Option<&str>,
    next: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = with_keys(env, current, previous);
    if let Some(n) = next {
        env.push(("STRATUM_ENCRYPTION_KEY_NEXT".into(), n.into()));
    }
    env
}

/// Runs `stratum <args>` expecting it to exit on its own within 30 s; returns its status
/// and stderr.
fn run_to_exit(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STRATUM_BIND", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("stratum {args:?} kept running: it should have refused to start");
        }
    }
}

/// Both signatures of a delivery verify with `secret`.
fn assert_signed_with(r: &Received, secret: &str) {
    let h = &r.headers;
    stratum_crypto::verify_stratum(
        secret.as_bytes(),
        &h["x-stratum-timestamp"],
        &h["x-stratum-signature"],
        &r.body,
        now(),
        300,
    )
    .expect("X-Stratum-Signature verifies with the original secret");
    stratum_crypto::verify_standard(
        secret,
        &h["webhook-id"],
        &h["webhook-timestamp"],
        &h["webhook-signature"],
        &r.body,
        now(),
        300,
    )
    .expect("webhook-signature verifies with the original secret");
}

async fn create_webhook(api: &Stratum, url: String, events: &[&str]) -> (String, String) {
    let (status, hook) = api
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": url, "events": events})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{hook}");
    (
        hook["id"].as_str().unwrap().to_owned(),
        hook["secret"]
            .as_str()
            .expect("a generated secret")
            .to_owned(),
    )
}

async fn rotate(api: &Stratum, old: &str, new: &str) -> (u16, Value) {
    api.api(
        "POST",
        "/maintenance/rotate-encryption-key",
        Some(json!({"old_key": old, "new_key": new})),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_original_secrets_and_gates_restarts() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let env = default_env(&db);
    let mut api = Stratum::start(&["serve"], &env).await.unwrap();
    let (status, tenant) = api
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "Acme", "slug": "acme"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let t = tenant["id"].as_str().unwrap().to_owned();
    let (_, secret) = create_webhook(&api, format!("{}/rot", rx.base), &["tenant.updated"]).await;
    let (status, _) = api
        .api(
            "PUT",
            &format!("/tenants/{t}/config/db_password"),
            Some(json!({"value": "hunter2", "sensitive": true})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    let (status, body) = rotate(&api, ENCRYPTION_KEY, NEW_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"config_entries_rotated": 1, "webhooks_rotated": 1})
    );

    // The same process signs with the secret it now decrypts with the new key.
    let (status, _) = api
        .api(
            "PATCH",
            &format!("/tenants/{t}"),
            Some(json!({"name": "Acme 2"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        rx.wait_for(Duration::from_secs(20), |r| !r.is_empty())
            .await,
        "no delivery after the rotation"
    );
    assert_signed_with(&rx.received_on("rot")[0], &secret);
    let (_, cfg) = api
        .api("GET", &format!("/tenants/{t}/config"), None)
        .await
        .unwrap();
    assert_eq!(cfg["db_password"]["value"], "hunter2");
    // Nothing stored under the old key any more.
    let old_id = stratum_crypto::EncryptionKey::derive(ENCRYPTION_KEY)
        .unwrap()
        .key_id()
        .to_owned();
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(*) AS n FROM (SELECT secret_encrypted AS v FROM webhooks
                  UNION ALL SELECT encrypted_value FROM config_entries WHERE sensitive) s
                 WHERE v LIKE 'v1:{old_id}:%'"
            )
        )
        .await
        .unwrap(),
        0
    );
    assert!(api.terminate(), "stratum did not stop cleanly");

    // Restarting with the old key is refused, with a message that says what to do.
    for cmd in [&["serve"][..], &["worker"][..]] {
        let (status, stderr) = run_to_exit(cmd, &env);
        assert!(!status.success(), "{cmd:?} started with the old key");
        assert!(stderr.contains("STRATUM_ENCRYPTION_KEY"), "{stderr}");
        assert!(
            stderr.contains("STRATUM_ENCRYPTION_KEY_PREVIOUS"),
            "{stderr}"
        );
        assert!(
            !stderr.contains(ENCRYPTION_KEY) && !stderr.contains(NEW_KEY),
            "key material in the logs: {stderr}"
        );
    }

    // With the new key it starts, reads the config, and signs with the original secret.
    let new_env = with_keys(&env, NEW_KEY, None);
    let api = Stratum::start(&["serve"], &new_env).await.unwrap();
    let (_, cfg) = api
        .api("GET", &format!("/tenants/{t}/config"), None)
        .await
        .unwrap();
    assert_eq!(cfg["db_password"]["value"], "hunter2");
    api.api(
        "PATCH",
        &format!("/tenants/{t}"),
        Some(json!({"name": "Acme 3"})),
    )
    .await
    .unwrap();
    assert!(
        rx.wait_for(Duration::from_secs(20), |r| r.len() >= 2).await,
        "no delivery after the restart"
    );
    for r in rx.received_on("rot") {
        assert_signed_with(&r, &secret);
    }
    drop(api);

    // A rolling restart may keep the old key as the previous one.
    let rolling = with_keys(&env, NEW_KEY, Some(ENCRYPTION_KEY));
    let api = Stratum::start(&["serve", "--no-worker"], &rolling)
        .await
        .unwrap();
    let (status, _) = api.api("GET", "/tenants", None).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_on_the_old_key_leaves_deliveries_for_one_with_the_new_key() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let env = default_env(&db);
    let api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let (_, secret) =
        create_webhook(&api, format!("{}/replica", rx.base), &["tenant.created"]).await;
    // A worker that started before the rotation, so it holds only the old key; one
    // delivery shows it is up and past its start-up key check.
    let mut old_worker = Stratum::start(&["worker"], &env).await.unwrap();
    api.api(
        "POST",
        "/tenants",
        Some(json!({"name": "Before", "slug": "before"})),
    )
    .await
    .unwrap();
    assert!(
        rx.wait_for(Duration::from_secs(20), |r| r.len() == 1).await,
        "the old worker never delivered"
    );
    // An API process that started before the rotation too, never given the new key.
    let stale_api = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let (status, tenant) = api
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "Keys", "slug": "keys"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let t = tenant["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .api(
            "PUT",
            &format!("/tenants/{t}/config/token"),
            Some(json!({"value": "s3cret", "sensitive": true})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        rx.wait_for(Duration::from_secs(20), |r| r.len() == 2).await,
        "the old worker never delivered"
    );
    let (status, body) = rotate(&api, ENCRYPTION_KEY, NEW_KEY).await;
    assert_eq!(status, 200, "{body}");

    // The stale API process answers 503 with a clear code wherever it meets the new key,
    // never 500, and changes nothing.
    for (method, path, body) in [
        ("GET", format!("/tenants/{t}/config"), None),
        (
            "PUT",
            format!("/tenants/{t}/config/token"),
            Some(json!({"value": "other", "sensitive": true})),
        ),
    ] {
        let (status, answer) = stale_api.api(method, &path, body).await.unwrap();
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "ENCRYPTION_KEY_UNAVAILABLE");
    }
    let (_, cfg) = api
        .api("GET", &format!("/tenants/{t}/config"), None)
        .await
        .unwrap();
    assert_eq!(cfg["token"]["value"], "s3cret");
    drop(stale_api);

    for i in 0..5 {
        let (status, _) = api
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": format!("T{i}"), "slug": format!("t{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    // The old worker claims them, cannot decrypt the secret, and gives them back
    // unattempted, saying why.
    let released = eventually(Duration::from_secs(20), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries
              WHERE last_error LIKE '%does not hold%' AND lease_id IS NULL",
        )
        .await
        .unwrap()
            == 5
    })
    .await;
    assert!(released, "the old worker did not release the deliveries");
    let untouched = count(
        &db.url,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending' AND attempts = 0",
    )
    .await
    .unwrap();
    assert_eq!(
        untouched, 5,
        "not lost, not dead-lettered, no attempt counted"
    );
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_delivery_attempts"
        )
        .await
        .unwrap(),
        2,
        "only the deliveries made before the rotation were attempted"
    );
    assert_eq!(
        rx.received_on("replica").len(),
        2,
        "nothing went out unsigned or signed wrongly"
    );
    assert!(old_worker.terminate());

    // The release delay (30 s) elapses; a worker restarted with the new key delivers them.
    sql(
        &db.url,
        "UPDATE webhook_deliveries SET next_retry_at = now() WHERE status = 'pending'",
    )
    .await
    .unwrap();
    let _new_worker = Stratum::start(&["worker"], &with_keys(&env, NEW_KEY, None))
        .await
        .unwrap();
    let delivered = eventually(Duration::from_secs(30), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success' AND attempts = 1",
        )
        .await
        .unwrap()
            == 7
    })
    .await;
    assert!(delivered, "the new worker did not deliver them");
    let got = rx.received_on("replica");
    assert_eq!(got.len(), 7);
    for r in &got {
        assert_signed_with(r, &secret);
    }
}

/// What the load generator saw: every HTTP answer's status (connection errors while a
/// process restarts are not answers and are counted apart).
#[derive(Default)]
struct LoadLog {
    statuses: Vec<(u16, String, String)>,
    connection_errors: usize,
}

/// Writes (sensitive config, tenant renames that fan out deliveries) and reads, spread
/// over the processes in `bases`, until `stop`.
async fn load(
    bases: Arc<Mutex<Vec<String>>>,
    tenant: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<LoadLog>>,
) {
    let http = client();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let targets = bases.lock().unwrap().clone();
        for base in targets {
            i += 1;
            let (method, path, body) = match i % 3 {
                0 => (
                    reqwest::Method::PUT,
                    format!("/tenants/{tenant}/config/secret_{}", i % 7),
                    Some(json!({"value": format!("v{i}"), "sensitive": true})),
                ),
                1 => (
                    reqwest::Method::PATCH,
                    format!("/tenants/{tenant}"),
                    Some(json!({"name": format!("Acme {i}")})),
                ),
                _ => (
                    reqwest::Method::GET,
                    format!("/tenants/{tenant}/config"),
                    None,
                ),
            };
            let mut req = http
                .request(method.clone(), format!("{base}/api/v1{path}"))
                .header("X-API-Key", ADMIN);
            if let Some(b) = body {
                req = req.json(&b);
            }
            match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let text = res.text().await.unwrap_or_default();
                    log.lock()
                        .unwrap()
                        .statuses
                        .push((status, format!("{method} {path}"), text));
                }
                Err(_) => log.lock().unwrap().connection_errors += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replaces the process `old` by one started with `env` (the README's rolling restart):
/// out of the load first, SIGTERM (it drains), start, back into the load.
async fn restart(
    old: Stratum,
    env: &[(String, String)],
    bases: &Arc<Mutex<Vec<String>>>,
) -> Stratum {
    let mut old = old;
    bases.lock().unwrap().retain(|b| *b != old.base);
    assert!(old.terminate(), "stratum did not stop cleanly");
    let new = Stratum::start(&["serve"], env).await.unwrap();
    bases.lock().unwrap().push(new.base.clone());
    new
}

/// The README's rolling rotation with two `stratum serve` processes on one database under
/// load: (1) each restarts with the new key readable (`STRATUM_ENCRYPTION_KEY_NEXT`),
/// (2) one rotation, (3) each restarts with the new key as `STRATUM_ENCRYPTION_KEY` (old as
/// previous). No request is answered 5xx, no delivery is dead-lettered, every delivery
/// goes out signed with the original secret, and a restart with only the new key starts.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_rotation_of_two_processes_under_load() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let env = default_env(&db);
    let a = Stratum::start(&["serve"], &env).await.unwrap();
    let b = Stratum::start(&["serve"], &env).await.unwrap();
    let (status, tenant) = a
        .api(
            "POST",
            "/tenants",
            Some(json!({"name": "Acme", "slug": "acme"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let t = tenant["id"].as_str().unwrap().to_owned();
    let (_, secret) = create_webhook(
        &a,
        format!("{}/rolling", rx.base),
        &["tenant.updated", "config.updated"],
    )
    .await;

    let bases = Arc::new(Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(LoadLog::default()));
    let loader = tokio::spawn(load(bases.clone(), t.clone(), stop.clone(), log.clone()));
    let answered = |n: usize| {
        let log = log.clone();
        async move {
            eventually(Duration::from_secs(30), || {
                let log = log.clone();
                async move { log.lock().unwrap().statuses.len() >= n }
            })
            .await
        }
    };
    assert!(answered(30).await, "the load never got going");

    // (1) Every process can read the new key before anything is encrypted with it.
    let step1 = with_key_set(&env, ENCRYPTION_KEY, None, Some(NEW_KEY));
    let a = restart(a, &step1, &bases).await;
    let b = restart(b, &step1, &bases).await;
    let seen = log.lock().unwrap().statuses.len();
    assert!(answered(seen + 30).await);

    // (2) One rotation, on either process, under load.
    let (status, body) = rotate(&b, ENCRYPTION_KEY, NEW_KEY).await;
    assert_eq!(status, 200, "{body}");
    let seen = log.lock().unwrap().statuses.len();
    assert!(answered(seen + 60).await, "load stalled after the rotation");

    // (3) Every process restarts with the new key as its own, the old one as previous.
    let step3 = with_keys(&env, NEW_KEY, Some(ENCRYPTION_KEY));
    let mut a = restart(a, &step3, &bases).await;
    let mut b = restart(b, &step3, &bases).await;
    let seen = log.lock().unwrap().statuses.len();
    assert!(answered(seen + 30).await);
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();

    let log = std::mem::take(&mut *log.lock().unwrap());
    let server_errors: Vec<_> = log.statuses.iter().filter(|(s, _, _)| *s >= 500).collect();
    assert!(
        server_errors.is_empty(),
        "{} of {} requests answered 5xx: {:?}",
        server_errors.len(),
        log.statuses.len(),
        &server_errors[..server_errors.len().min(5)]
    );
    let unexpected: Vec<_> = log.statuses.iter().filter(|(s, _, _)| *s >= 300).collect();
    assert!(
        unexpected.is_empty(),
        "{:?}",
        &unexpected[..unexpected.len().min(5)]
    );

    // Every delivery goes out; none is dead-lettered.
    let settled = eventually(Duration::from_secs(60), || async {
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
        )
        .await
        .unwrap()
            == 0
    })
    .await;
    assert!(settled, "deliveries still pending");
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status <> 'success'"
        )
        .await
        .unwrap(),
        0,
        "a delivery was dead-lettered"
    );
    let delivered = count(&db.url, "SELECT count(*) AS n FROM webhook_deliveries")
        .await
        .unwrap();
    assert!(delivered > 0);
    for r in rx.received_on("rolling") {
        assert_signed_with(&r, &secret);
    }

    // Nothing is left under the old key, and a process with only the new key starts.
    let old_id = stratum_crypto::EncryptionKey::derive(ENCRYPTION_KEY)
        .unwrap()
        .key_id()
        .to_owned();
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(*) AS n FROM (SELECT secret_encrypted AS v FROM webhooks
                  UNION ALL SELECT encrypted_value FROM config_entries WHERE sensitive) s
                 WHERE v LIKE 'v1:{old_id}:%'"
            )
        )
        .await
        .unwrap(),
        0
    );
    assert!(a.terminate() && b.terminate());
    let only_new = Stratum::start(&["serve"], &with_keys(&env, NEW_KEY, None))
        .await
        .unwrap();
    let (status, cfg) = only_new
        .api("GET", &format!("/tenants/{t}/config"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{cfg}");
    assert!(cfg["secret_0"]["value"].is_string(), "{cfg}");
}
