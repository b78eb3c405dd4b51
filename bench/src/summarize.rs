//! The table `bench/run.sh` prints at the end, from the scenarios' JSON summary lines.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    match cur {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() != 0.0 && x.abs() >= 100.0 => format!("{x:.0}"),
            Some(x) if x.fract() != 0.0 => format!("{x:.1}"),
            _ => n.to_string(),
        },
        Value::Null => "n/a".to_owned(),
        other => other.to_string(),
    }
}

/// A value in ms with its unit, or `never` (some deliveries never arrived).
fn msv(v: &Value, path: &[&str]) -> String {
    match num(v, path).as_str() {
        "n/a" => "never".to_owned(),
        x => format!("{x} ms"),
    }
}

fn headline(v: &Value) -> String {
    match v["scenario"].as_str().unwrap_or("") {
        "throughput" => format!(
            "{} deliveries: {}/s received, {}/s completed in DB; RSS idle {} MiB, peak {} MiB; CPU stratum {}%, its postgres backends {}% (of one core)",
            num(v, &["deliveries"]),
            num(v, &["received_per_s"]),
            num(v, &["completed_per_s"]),
            num(v, &["rss_idle_mib"]),
            num(v, &["rss_peak_mib"]),
            num(v, &["cpu_stratum_core_pct"]),
            num(v, &["cpu_postgres_core_pct"]),
        ),
        "latency" => format!(
            "{}/s (achieved {}): event->receipt p50 {} / p95 {} / p99 {} ms; API call p50 {} / p99 {} ms",
            num(v, &["rate"]),
            num(v, &["achieved_rate"]),
            num(v, &["latency", "p50_ms"]),
            num(v, &["latency", "p95_ms"]),
            num(v, &["latency", "p99_ms"]),
            num(v, &["api_call", "p50_ms"]),
            num(v, &["api_call", "p99_ms"]),
        ),
        "fanout" => {
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| match x.as_f64() {
                                Some(f) => format!("{f:.0}"),
                                None => x.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_default()
            };
            format!(
                "1 event -> {} webhooks: API call {} ms; all received after {} ms (round 1 cold / warm)",
                num(v, &["webhooks"]),
                list("api_ms"),
                list("all_received_ms"),
            )
        }
        "isolation" => format!(
            "normal webhooks' p99 {} without, {} with a {} s receiver beside them (ratio {}); p50 {} -> {}; not arrived within the drain: {} -> {}",
            msv(v, &["without_slow", "p99_ms"]),
            msv(v, &["with_slow", "p99_ms"]),
            num(v, &["slow_secs"]),
            num(v, &["p99_ratio"]),
            msv(v, &["without_slow", "p50_ms"]),
            msv(v, &["with_slow", "p50_ms"]),
            num(v, &["missing_without"]),
            num(v, &["missing_with"]),
        ),
        "replay" => format!(
            "live p99 {} without, {} during a {}-event replay (ratio {}); p50 {} -> {}; not arrived within the drain: {} -> {}; replay delivered {} in {} s",
            msv(v, &["without_replay", "p99_ms"]),
            msv(v, &["during_replay", "p99_ms"]),
            num(v, &["replay_events"]),
            num(v, &["p99_ratio"]),
            msv(v, &["without_replay", "p50_ms"]),
            msv(v, &["during_replay", "p50_ms"]),
            num(v, &["missing_without"]),
            num(v, &["missing_during"]),
            num(v, &["replay_delivered"]),
            num(v, &["replay_secs"]),
        ),
        "tenant-create" => format!(
            "POST /tenants with {}-webhook fan-out, no worker: p50 {} / p95 {} / p99 {} ms ({}/s sequential)",
            num(v, &["webhooks"]),
            num(v, &["p50_ms"]),
            num(v, &["p95_ms"]),
            num(v, &["p99_ms"]),
            num(v, &["creates_per_s"]),
        ),
        "hot-tenant" => format!(
            "1 tenant PATCHed at {}/s (achieved {}): API p50 {} / p95 {} / p99 {} / max {} ms; non-2xx {} (5xx {}); event->receipt p50 {} / p99 {}; lost updates {} of {} audit entries",
            num(v, &["rate"]),
            num(v, &["achieved_rate"]),
            num(v, &["api", "p50_ms"]),
            num(v, &["api", "p95_ms"]),
            num(v, &["api", "p99_ms"]),
            num(v, &["api", "max_ms"]),
            num(v, &["non_2xx"]),
            num(v, &["status_5xx"]),
            msv(v, &["event_receipt", "p50_ms"]),
            msv(v, &["event_receipt", "p99_ms"]),
            num(v, &["lost_updates"]),
            num(v, &["audit_entries"]),
        ),
        "audit-chain" => format!(
            "API writes {}/s sealing off, {}/s on ({} % slower; CPU per write {} %); sealing lag p50 {} / p99 {}; export of {} entries: RSS {} -> peak {} MiB",
            num(v, &["write_rate_off_per_s"]),
            num(v, &["write_rate_on_per_s"]),
            num(v, &["slower_pct"]),
            num(v, &["cpu_more_pct"]),
            msv(v, &["seal_lag", "p50_ms"]),
            msv(v, &["seal_lag", "p99_ms"]),
            num(v, &["export_lines"]),
            num(v, &["export_rss_before_mib"]),
            num(v, &["export_rss_peak_mib"]),
        ),
        "engine" => {
            // A run of rows j-l alone has none of issue 11's rows to show.
            let issue_11 = ["a", "b", "c", "d", "e", "f", "g", "h"]
                .iter()
                .any(|k| v.get(*k).is_some());
            let controls = controls_headline(v);
            if issue_11 {
                format!("{}{controls}", engine_headline(v))
            } else {
                format!("defaults:{}", controls.trim_start_matches(" /"))
            }
        }
        _ => v.to_string(),
    }
}

/// Issue 11's rows of the engine table.
fn engine_headline(v: &Value) -> String {
    format!(
            "defaults: (a) {}/s spread, lost {} / (b) {}/s one tenant, lost {} / (c) p50 {} p99 {} / (d) p50 {} p99 {} / (e) {} of 5 within 1.5x / (f) {} req/s p99 {} / (g) drain {}/s / (h) purge {} s / (i) RSS {} MiB (busy share per row in the scenario's table)",
            num(v, &["a", "deliveries_per_s"]),
            num(v, &["a", "lost"]),
            num(v, &["b", "deliveries_per_s"]),
            num(v, &["b", "lost"]),
            msv(v, &["c", "event_receipt", "p50_ms"]),
            msv(v, &["c", "event_receipt", "p99_ms"]),
            msv(v, &["d", "event_receipt", "p50_ms"]),
            msv(v, &["d", "event_receipt", "p99_ms"]),
            num(v, &["e", "within_1_5"]),
            num(v, &["f", "api_per_s"]),
            msv(v, &["f", "api", "p99_ms"]),
            num(v, &["g", "deliveries_per_s"]),
            num(v, &["h", "seconds"]),
            num(v, &["i_rss_max_mib"]),
    )
}

/// Issue 22's rows of the engine table (j, k, l), those that ran.
fn controls_headline(v: &Value) -> String {
    let mut s = String::new();
    if v.get("j").is_some() {
        s.push_str(&format!(
            " / (j) open breaker {} attempts/min, healthy p99 {}x once open ({}x while opening)",
            num(v, &["j", "attempts_per_min_open"]),
            num(v, &["j", "p99_ratio_open"]),
            num(v, &["j", "p99_ratio_opening"]),
        ));
    }
    if v.get("k").is_some() {
        s.push_str(&format!(
            " / (k) FIFO {}/s, {} out of order",
            num(v, &["k", "deliveries_per_s"]),
            num(v, &["k", "out_of_order"]),
        ));
    }
    if v.get("l").is_some() {
        s.push_str(&format!(
            " / (l) limit {}/s over 2 workers: worst second {}",
            num(v, &["l", "rate_limit"]),
            num(v, &["l", "worst_second"]),
        ));
    }
    s
}

/// Prints the table.
pub fn run(files: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    if files.is_empty() {
        std::io::stdin().read_to_string(&mut text)?;
    }
    for f in files {
        text.push_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        );
        text.push('\n');
    }
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with("{\"scenario\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    println!("{:<14} | result", "scenario");
    println!("{:-<14}-+-{:-<100}", "", "");
    for v in &rows {
        println!(
            "{:<14} | {}",
            v["scenario"].as_str().unwrap_or("?"),
            headline(v)
        );
    }
    Ok(())
}
