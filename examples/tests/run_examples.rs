//! Runs the examples as their users would: the receiver, then the embedding service
//! delivering to it.
#![allow(
    clippy::expect_used,
    reason = "a test harness: a step that cannot run fails the test"
)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// An example binary built next to this test (`cargo test` and `cargo build --examples`
/// put them in `<target>/<profile>/examples`).
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/<profile>/deps")
        .join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p stratum-examples --examples`",
        path.display()
    );
    Command::new(path)
}

/// Starts the receiver on a free port; returns it and the URL it listens on.
fn receiver(secret: &str) -> (Child, String) {
    let mut child = example("verify-receiver")
        .arg("--once")
        .env("WEBHOOK_SECRET", secret)
        .env("RECEIVER_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the receiver starts");
    let mut first = String::new();
    let stdout = child.stdout.as_mut().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the receiver prints its address");
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (child, url)
}

fn finish(mut child: Child) -> (bool, String) {
    let status = child.wait().expect("the receiver exits");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).expect("its output");
    }
    (status.success(), out)
}

fn embed(url: &str, secret: &str) -> std::process::Output {
    example("embed-webhooks")
        .env("RECEIVER_URL", url)
        .env("WEBHOOK_SECRET", secret)
        .output()
        .expect("the embedding example runs")
}

#[test]
fn the_embedded_service_delivers_a_signed_event_the_receiver_verifies() {
    let secret = stratum_crypto::generate_whsec();
    let (rx, url) = receiver(&secret);
    let sent = embed(&url, &secret);
    let (verified, out) = finish(rx);
    let sent_out = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{sent_out}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        sent_out.contains("the receiver answered Some(204)"),
        "{sent_out}"
    );
    assert!(verified, "{out}");
    assert!(out.contains("verified order.shipped delivery"), "{out}");
    assert!(out.contains(r#""order_id":"o-1001""#), "{out}");
}

#[test]
fn a_delivery_signed_with_another_secret_is_rejected() {
    let (rx, url) = receiver(&stratum_crypto::generate_whsec());
    let sent = embed(&url, &stratum_crypto::generate_whsec());
    let (verified, out) = finish(rx);
    assert!(!verified, "{out}");
    assert!(out.contains("rejected a delivery"), "{out}");
    assert!(!sent.status.success(), "the sender reports the refusal");
    assert!(
        String::from_utf8_lossy(&sent.stderr).contains("not delivered"),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
}
