//! Issue 22's rows of the engine table: the delivery controls at the binary's defaults.
//!
//! - **j**: one webhook that never answers in time among 64 healthy tenants' webhooks:
//!   when its circuit breaker opens, the attempts spent on it per minute once it is open,
//!   and the healthy webhooks' p99 before it was added, while its breaker opens and once
//!   it is open.
//! - **k**: a backlog on one FIFO webhook drained by a `stratum worker` to a fast
//!   receiver: deliveries per second (one in flight, so bounded by the round trip), the
//!   gap between two receipts, and whether they arrived in the tenant's audit-chain order.
//! - **l**: a backlog on one webhook with `rate_limit_per_second` drained by two
//!   `stratum worker` processes at once: the receiver's worst one-second count.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{
    defaults, diff_ms, drive, latency_phase, latency_phase_for, merge, round2, settle, Cpu,
    EngineArgs, Load, Phase, Rig, Row,
};
use crate::harness::{connect, ms, query_f64, round1, unix_now, Api, Percentiles, Server};

/// Creates a webhook on `tenant` subscribed to `tenant.updated`, delivering to the
/// receiver's `path`, with `extra` fields in the request body; returns its id.
async fn create_hook(rig: &Rig, path: &str, tenant: &str, extra: Value) -> Result<String> {
    let mut body = json!({
        "url": format!("{}/{path}", rig.rx.base),
        "events": ["tenant.updated"],
        "tenant_id": tenant,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let v = rig.api.post("/webhooks", &body, 201).await?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in the created webhook: {v}"))
}

/// Polls `GET /webhooks/:id/health` every 100 ms on a task of its own until its breaker
/// reports `open`; the task ends with the instant it was first seen open, or `None` at
/// `deadline`.
fn watch_open(
    api: Api,
    id: String,
    deadline: Instant,
) -> tokio::task::JoinHandle<Result<Option<Instant>>> {
    tokio::spawn(async move {
        let path = format!("/webhooks/{id}/health");
        while Instant::now() < deadline {
            let (status, v) = api.call(reqwest::Method::GET, &path, None).await?;
            if status == 200 && v["breaker"]["state"] == "open" {
                return Ok(Some(Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(None)
    })
}

fn p99(p: &Phase) -> f64 {
    p.d.latency.map_or(f64::INFINITY, |l| l.p99)
}

/// CPU ms of the bench database's PostgreSQL backends per PATCH of a phase (the write,
/// its deliveries, and whatever the claims cost).
fn pg_per_patch(p: &Phase) -> f64 {
    p.cpu.postgres_own * 1e3 / (p.d.expected.max(1) as f64)
}

fn json_num(x: f64) -> Value {
    if x.is_finite() {
        json!(round2(x))
    } else {
        Value::Null
    }
}

/// Row j: 64 child tenants with a webhook each (PATCH n goes to tenant n mod 64, so its
/// webhook gets it), then one more webhook on their parent, which gets every PATCH, on a
/// receiver path that never answers within the server's attempt timeout.
pub(super) async fn breaker_row(a: &EngineArgs) -> Result<Row> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let mut rig = Rig::new(a, a.tenants, 0, false).await?;
    let tenants = rig.tenants.clone();
    let rig_ref = &rig;
    let _ids: Vec<String> = stream::iter(tenants.iter().enumerate())
        .map(|(i, t)| async move { create_hook(rig_ref, &format!("w{i}"), t, json!({})).await })
        .buffered(8)
        .try_collect()
        .await?;
    rig.hooks = u32::try_from(tenants.len()).context("too many tenants")?;
    rig.per_tenant = true;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();

    let without = latency_phase(a, &mut rig).await?;
    let owner = rig.owner.clone();
    let dead = create_hook(&rig, "dead", &owner, json!({})).await?;
    let added = Instant::now();
    let watch = watch_open(
        rig.api.clone(),
        dead.clone(),
        added + Duration::from_secs(180),
    );
    let opening = latency_phase_for(a, &mut rig, a.opening_secs).await?;
    let opened = watch.await??;
    let open = latency_phase(a, &mut rig).await?;
    let window = Duration::from_secs(a.breaker_window_secs.max(1));
    if let Some(t) = opened {
        let end = t + window;
        let now = Instant::now();
        if now < end {
            tokio::time::sleep(end - now).await;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid()], rig.db.name()).since(&cpu0);

    let arrivals = rig
        .receipts
        .dead
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    // When each attempt reached the receiver, in seconds from the breaker's `opened_at` as
    // the server recorded it (same host, so the wall clocks agree), else from the
    // webhook's creation.
    let sql = connect(&rig.db.url).await?;
    let opened_at = query_f64(
        &sql,
        &format!(
            "SELECT (SELECT extract(epoch FROM opened_at)::float8 FROM webhook_controls
                      WHERE webhook_id = '{dead}')"
        ),
    )
    .await?;
    let (now_unix, now) = (unix_now(), Instant::now());
    let zero = opened_at.unwrap_or(now_unix - now.duration_since(added).as_secs_f64());
    let rel: Vec<f64> = arrivals
        .iter()
        .map(|t| now_unix - now.duration_since(*t).as_secs_f64() - zero)
        .collect();
    // Attempts before the breaker opened, and in the window that starts when it did (the
    // run waited `window` from when it was seen open, which is later).
    let counts = opened.and(opened_at).map(|_| {
        let w = window.as_secs_f64();
        (
            rel.iter().filter(|x| **x < 0.0).count(),
            rel.iter().filter(|x| (0.0..w).contains(*x)).count(),
        )
    });
    let mut timeline: Vec<String> = rel.iter().take(40).map(|x| format!("{x:+.2}")).collect();
    if arrivals.len() > 40 {
        timeline.push("...".to_owned());
    }
    let timeline = timeline.join(" ");
    let per_min = counts.map_or(f64::NAN, |(_, n)| n as f64 * 60.0 / window.as_secs_f64());
    let opened_after = opened.map_or(f64::NAN, |t| diff_ms(t, added) / 1e3);

    let (_, health) = rig
        .api
        .call(
            reqwest::Method::GET,
            &format!("/webhooks/{dead}/health"),
            None,
        )
        .await?;
    let breaker = health["breaker"].clone();
    let row = sql
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'pending'),
                    count(*) FILTER (WHERE status = 'failed'),
                    coalesce(sum(attempts), 0)::bigint, coalesce(max(attempts), 0)::bigint
               FROM webhook_deliveries WHERE webhook_id = $1::text::uuid",
            &[&dead],
        )
        .await
        .context("counting the timing-out webhook's deliveries")?;
    let (total, pending, failed, attempts, max_attempts): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));

    let (r_opening, r_open) = (p99(&opening) / p99(&without), p99(&open) / p99(&without));
    let lost = without.d.lost + opening.d.lost + open.d.lost;
    let duplicated = without.d.duplicated + opening.d.duplicated + open.d.duplicated;
    let phase = |p: &Phase| {
        p.d.latency.map_or("no deliveries".to_owned(), |l| {
            format!(
                "p50 {} p99 {} ({:.0} PATCH/s, busy {:.0}%, its PostgreSQL backends {:.2} ms CPU per PATCH)",
                ms(l.p50),
                ms(l.p99),
                p.achieved,
                p.cpu.busy_pct,
                pg_per_patch(p)
            )
        })
    };
    let breaker_text = match (opened, counts) {
        (Some(_), Some((before, inside))) => format!(
            "breaker open {opened_after:.1} s after the webhook was added ({before} attempts before its opened_at); {inside} attempts in the {} s from its opened_at = {per_min:.1} per minute (attempts reached the receiver at s from its opened_at: {timeline})",
            window.as_secs()
        ),
        _ => format!(
            "breaker NOT open 180 s after the webhook was added ({} attempts, at s from its creation: {timeline})",
            arrivals.len()
        ),
    };
    let result = format!(
        "{breaker_text}; healthy event -> receipt: without it {}, while it opens {} ({r_opening:.2}x), once open {} ({r_open:.2}x p99); its {total} deliveries: {pending} pending, {failed} dead-lettered, {attempts} attempts recorded (at most {max_attempts} on one); breaker now {}; healthy deliveries lost {lost}, duplicated {duplicated}",
        phase(&without),
        phase(&opening),
        phase(&open),
        breaker
    );
    Ok(Row {
        key: 'j',
        shape: format!(
            "{} PATCH/s over {} tenants, one webhook each; then one more on their parent whose receiver never answers ({} s of load while its breaker opens, then {} s once open)",
            a.rate, a.tenants, a.opening_secs, a.latency_secs
        ),
        result,
        cpu,
        wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({
                "opened_after_s": json_num(opened_after),
                "attempts_before_open": counts.map(|c| c.0),
                "attempts_in_window": counts.map(|c| c.1),
                "window_s": window.as_secs(),
                "attempts_per_min_open": json_num(per_min),
                "attempts_at_s": timeline,
                "healthy_without": without.d.latency.map(|p| p.json()),
                "healthy_opening": opening.d.latency.map(|p| p.json()),
                "healthy_open": open.d.latency.map(|p| p.json()),
                "pg_ms_per_patch": [json_num(pg_per_patch(&without)), json_num(pg_per_patch(&opening)), json_num(pg_per_patch(&open))],
                "p99_ratio_opening": json_num(r_opening),
                "p99_ratio_open": json_num(r_open),
                "dead_deliveries": total,
                "dead_pending": pending,
                "dead_letters": failed,
                "dead_attempts": attempts,
                "breaker": breaker,
                "lost": lost,
                "duplicated": duplicated,
            }),
            &[cpu.json(wall)],
        ),
    })
}

/// The metadata sequence numbers of the tenant's `tenant.updated` audit entries in chain
/// order, once every one of them is sealed (at most 30 s); `None` if they are not by then.
async fn chain_order(rig: &Rig, tenant: &str) -> Result<Option<Vec<i64>>> {
    let sql = connect(&rig.db.url).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsealed: i64 = sql
            .query_one(
                "SELECT count(*) FROM audit_logs
                  WHERE action = 'tenant.updated' AND resource_id = $1 AND seq IS NULL",
                &[&tenant],
            )
            .await?
            .get(0);
        if unsealed == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = sql
        .query(
            "SELECT (after_state->'metadata'->>'seq')::bigint FROM audit_logs
              WHERE action = 'tenant.updated' AND resource_id = $1 ORDER BY seq",
            &[&tenant],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .filter_map(|r| r.get::<_, Option<i64>>(0))
            .collect(),
    ))
}

/// Row k: `--fifo-patches` PATCHes of one tenant enqueued with no worker running for one
/// FIFO webhook, then drained by a `stratum worker` at its defaults.
pub(super) async fn fifo_row(a: &EngineArgs) -> Result<Row> {
    let mut rig = Rig::new(a, 0, 0, true).await?;
    let owner = rig.owner.clone();
    create_hook(&rig, "w0", &owner, json!({"ordering": "fifo"})).await?;
    rig.hooks = 1;
    let outcomes = drive(&mut rig, Load::Count(a.fifo_patches), a.connections).await?;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let worker = Server::spawn_worker(&rig.db, &defaults(false))?;
    rig.rss.add(worker.pid());
    let d = settle(
        &rig,
        &outcomes,
        1,
        Duration::from_secs(a.drain_secs.max(120)),
    )
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid(), worker.pid()], rig.db.name()).since(&cpu0);
    drop(worker);

    // Receipts in arrival order (the receiver records them under one lock), first of each.
    let mut seen = std::collections::HashSet::new();
    let received: Vec<(u64, Instant)> = rig
        .receipts
        .snapshot()
        .into_iter()
        .filter(|(h, s, _)| *h == 0 && seen.insert(*s))
        .map(|(_, s, at)| (s, at))
        .collect();
    let gaps = Percentiles::of(
        received
            .windows(2)
            .map(|w| diff_ms(w[1].1, w[0].1))
            .collect(),
    );
    let order = chain_order(&rig, &owner).await?;
    let (order_text, inversions) = match &order {
        Some(chain) => {
            let pos: std::collections::HashMap<i64, usize> =
                chain.iter().enumerate().map(|(i, s)| (*s, i)).collect();
            let at: Vec<Option<usize>> = received
                .iter()
                .map(|(s, _)| i64::try_from(*s).ok().and_then(|s| pos.get(&s).copied()))
                .collect();
            let unknown = at.iter().filter(|p| p.is_none()).count();
            let known: Vec<usize> = at.into_iter().flatten().collect();
            let inv = known.windows(2).filter(|w| w[1] < w[0]).count();
            (
                format!(
                    "receipt order against the tenant's audit chain ({} entries): {inv} out of order{}",
                    chain.len(),
                    if unknown > 0 {
                        format!(", {unknown} receipts not in the chain")
                    } else {
                        String::new()
                    }
                ),
                Some(inv),
            )
        }
        None => (
            "audit entries not all sealed within 30 s: order not checked".to_owned(),
            None,
        ),
    };
    let startup = d.first.map_or(f64::NAN, |f| diff_ms(f, t0) / 1e3);
    Ok(Row {
        key: 'k',
        shape: format!(
            "FIFO drain: {} PATCHes of one tenant enqueued with no worker running for one `ordering: fifo` webhook, then `stratum worker`; fast receiver",
            a.fifo_patches
        ),
        result: format!(
            "{:.0} deliveries/s (first receipt -> last; first receipt {startup:.2} s after the worker was started); gap between receipts p50 {} p99 {} max {}; {order_text}; {}",
            d.per_s(),
            gaps.map_or("-".into(), |g| ms(g.p50)),
            gaps.map_or("-".into(), |g| ms(g.p99)),
            gaps.map_or("-".into(), |g| ms(g.max)),
            d.line()
        ),
        cpu,
        wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({
                "deliveries_per_s": round1(d.per_s()),
                "gap": gaps.map(|g| g.json()),
                "out_of_order": inversions,
            }),
            &[d.json(), cpu.json(wall)],
        ),
    })
}

/// The most instants in any window `[t, t + 1 s)` starting at one of them (sorted input).
fn worst_sliding_second(times: &[Instant]) -> usize {
    let mut worst = 0;
    let mut j = 0;
    for (i, t) in times.iter().enumerate() {
        let end = *t + Duration::from_secs(1);
        j = j.max(i);
        while j < times.len() && times[j] < end {
            j += 1;
        }
        worst = worst.max(j - i);
    }
    worst
}

/// Row l: `--limited-patches` PATCHes of one tenant enqueued with no worker running for
/// one webhook with `rate_limit_per_second` = `--rate-limit`, then drained by two
/// `stratum worker` processes started together.
pub(super) async fn rate_limit_row(a: &EngineArgs) -> Result<Row> {
    let mut rig = Rig::new(a, 0, 0, true).await?;
    let owner = rig.owner.clone();
    create_hook(
        &rig,
        "w0",
        &owner,
        json!({"rate_limit_per_second": a.rate_limit}),
    )
    .await?;
    rig.hooks = 1;
    let outcomes = drive(&mut rig, Load::Count(a.limited_patches), a.connections).await?;
    let cpu0 = Cpu::take(&[rig.server.pid()], rig.db.name());
    rig.rss.take_max_mib();
    let t0 = Instant::now();
    let w1 = Server::spawn_worker(&rig.db, &defaults(false))?;
    let w2 = Server::spawn_worker(&rig.db, &defaults(false))?;
    rig.rss.add(w1.pid());
    rig.rss.add(w2.pid());
    // Twice the time the limit allows, plus the usual drain.
    let expected_secs = a.limited_patches / u64::from(a.rate_limit.max(1));
    let d = settle(
        &rig,
        &outcomes,
        1,
        Duration::from_secs(a.drain_secs + 2 * expected_secs),
    )
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::take(&[rig.server.pid(), w1.pid(), w2.pid()], rig.db.name()).since(&cpu0);
    drop((w1, w2));

    // Every request counts (a duplicate is an attempt too).
    let mut times: Vec<Instant> = rig
        .receipts
        .snapshot()
        .into_iter()
        .filter(|(h, _, _)| *h == 0)
        .map(|(_, _, at)| at)
        .collect();
    times.sort();
    let worst = worst_sliding_second(&times);
    let buckets: Vec<usize> = match times.first() {
        Some(first) => {
            let mut b: Vec<usize> = Vec::new();
            for t in &times {
                let i = usize::try_from(t.duration_since(*first).as_secs()).unwrap_or(0);
                if b.len() <= i {
                    b.resize(i + 1, 0);
                }
                b[i] += 1;
            }
            b
        }
        None => Vec::new(),
    };
    let worst_bucket = buckets.iter().copied().max().unwrap_or(0);
    let limit = a.rate_limit as usize;
    let startup = d.first.map_or(f64::NAN, |f| diff_ms(f, t0) / 1e3);
    let list = buckets
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Row {
        key: 'l',
        shape: format!(
            "rate limit {}/s: {} PATCHes of one tenant enqueued with no worker running, then two `stratum worker` processes started together",
            a.rate_limit, a.limited_patches
        ),
        result: format!(
            "worst one-second count at the receiver {worst} (any 1 s window; limit {}, 10 % over is {}), worst whole second from the first receipt {worst_bucket}; {:.1} deliveries/s (first receipt -> last; first receipt {startup:.2} s after the workers were started); per second: {list}; {}",
            a.rate_limit,
            limit + limit / 10,
            d.per_s(),
            d.line()
        ),
        cpu,
        wall,
        rss_mib: rig.rss.take_max_mib(),
        json: merge(
            json!({
                "rate_limit": a.rate_limit,
                "worst_second": worst,
                "worst_whole_second": worst_bucket,
                "within_10_pct": worst <= limit + limit / 10,
                "deliveries_per_s": round1(d.per_s()),
            }),
            &[d.json(), cpu.json(wall)],
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_second_is_the_fullest_window_starting_at_a_request() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(worst_sliding_second(&[]), 0);
        assert_eq!(worst_sliding_second(&[at(0)]), 1);
        // 0, 500, 999 fit one window; 1000 starts the next one.
        assert_eq!(
            worst_sliding_second(&[at(0), at(500), at(999), at(1000)]),
            3
        );
        // A window that straddles two whole seconds: 900..1800 holds four.
        assert_eq!(
            worst_sliding_second(&[at(0), at(900), at(1000), at(1100), at(1800), at(2500)]),
            4
        );
    }
}
