//! The tamper-evident audit log end to end: the real server seals as it serves, a global
//! export verifies offline with `stratum audit verify --file` and with the stdlib-only
//! Python verifier of the README, and both name the same entry when the log is tampered with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use stratum_e2e::{binary, client, default_env, eventually, Stratum, TestDb, ADMIN};

async fn export(s: &Stratum, path: &Path) -> usize {
    let body = client()
        .get(format!("{}/api/v1/audit-logs/export", s.base))
        .header("X-API-Key", ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(path, &body).unwrap();
    body.lines().count()
}

/// Runs a verifier; its report (stdout, JSON) and whether it exited 0.
fn run(cmd: &mut Command) -> (Value, bool) {
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.success())
}

fn rust_verify(file: &Path) -> (Value, bool) {
    run(Command::new(binary())
        .args(["audit", "verify", "--file"])
        .arg(file))
}

fn python_verify(file: &Path) -> (Value, bool) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("verify_audit_chain.py");
    run(Command::new("python3").arg(script).arg(file))
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_verify_offline_in_rust_and_python_alike() {
    let db = TestDb::new().await;
    let s = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let (_, t) = s
        .api("POST", "/tenants", Some(json!({"name": "Ünïcode \"Co\"", "slug": "acme", "metadata": {"tier": 1.5, "big": 1e21, "tiny": 2.5e-9, "n": 12345678901234u64}})))
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    for (k, v) in [
        ("ratio", json!(0.1)),
        ("line", json!("a\nb\t\u{1}/\\")),
        ("list", json!([1, 2.0, null, true])),
    ] {
        let (status, _) = s
            .api(
                "PUT",
                &format!("/tenants/{id}/config/{k}"),
                Some(json!({"value": v})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let (status, _) = s
        .api("POST", "/maintenance/purge-expired", Some(json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // The running server seals on its own.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, v) = s.api("GET", "/audit-logs/verify", None).await.unwrap();
            v["ok"] == true && v["verified"] == 5
        })
        .await,
        "the server did not seal its entries"
    );
    let (_, online) = s.api("GET", "/audit-logs/verify", None).await.unwrap();

    let dir = std::env::temp_dir().join(format!("stratum-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audit.ndjson");
    assert_eq!(export(&s, &file).await, 5);
    let (rust, rust_ok) = rust_verify(&file);
    let (python, python_ok) = python_verify(&file);
    assert!(rust_ok && python_ok, "{rust} / {python}");
    assert_eq!(rust, online);
    assert_eq!(python, rust);

    // Tampered in the database: the export carries the change, both verifiers find it.
    stratum_e2e::sql(
        &db.url,
        "UPDATE audit_logs SET metadata = metadata || '{\"ip\": \"10.0.0.1\"}' WHERE seq = 3",
    )
    .await
    .unwrap();
    export(&s, &file).await;
    let (rust, rust_ok) = rust_verify(&file);
    let (python, python_ok) = python_verify(&file);
    assert!(!rust_ok && !python_ok);
    assert_eq!(rust["first_bad"]["seq"], 3);
    assert_eq!(rust["first_bad"]["reason"], "changed");
    assert_eq!(python, rust);
    let (_, online) = s.api("GET", "/audit-logs/verify", None).await.unwrap();
    assert_eq!(online["first_bad"], rust["first_bad"]);

    // A line taken out of the file: both report the missing seq.
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&file, kept.join("\n")).unwrap();
    let (rust, _) = rust_verify(&file);
    let (python, _) = python_verify(&file);
    assert_eq!(
        rust["first_bad"],
        json!({"id": null, "seq": 2, "reason": "deleted"})
    );
    assert_eq!(python, rust);

    // An export that starts after a purged prefix is anchored at its first entry.
    let tail: Vec<&str> = text.lines().skip(3).collect();
    std::fs::write(&file, tail.join("\n")).unwrap();
    let (rust, rust_ok) = rust_verify(&file);
    let (python, _) = python_verify(&file);
    assert!(rust_ok, "{rust}");
    assert_eq!(rust["verified"], 1);
    assert_eq!(python, rust);
    let _ = std::fs::remove_dir_all(dir);
}
