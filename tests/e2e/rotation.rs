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
use stratum_e2e::{
    binary, count, default_env, eventually, free_port, sql, Received, Receiver, Stratum, TestDb,
    ENCRYPTION_KEY,
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
    let (status, body) = rotate(&api, ENCRYPTION_KEY, NEW_KEY).await;
    assert_eq!(status, 200, "{body}");

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
        1,
        "only the delivery made before the rotation was attempted"
    );
    assert_eq!(
        rx.received_on("replica").len(),
        1,
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
            == 6
    })
    .await;
    assert!(delivered, "the new worker did not deliver them");
    let got = rx.received_on("replica");
    assert_eq!(got.len(), 6);
    for r in &got {
        assert_signed_with(r, &secret);
    }
}
