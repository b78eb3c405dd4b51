//! The audit hash chain against a real PostgreSQL: sealing in commit order under
//! concurrent writers (some rolled back, some held open), tampering found at the right
//! entry, and verification after a purge.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_audit::chain::reason;
use stratum_audit::{AuditLog, VerifyReport};
use stratum_core::{Caller, Journal};
use stratum_maintenance::{MaintenanceStore, PurgeCutoffs};
use stratum_postgres::{
    connect, record, run_sealer, seal_pass, PgAuditLog, PgMaintenanceStore, Pool, PoolConfig,
};
use stratum_testkit::sql::{conn, count, exec_on};
use stratum_testkit::TestDb;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(QueryableByName)]
struct Sealed {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    label: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
}

/// Every entry with its label (`after_state.label`) in chain order, unsealed last.
async fn entries(url: &str) -> Vec<Sealed> {
    let mut c = conn(url).await;
    diesel::sql_query(
        "SELECT id, after_state->>'label' AS label, seq FROM audit_logs
          ORDER BY seq NULLS LAST, created_at, id",
    )
    .load(&mut c)
    .await
    .unwrap()
}

fn journal(label: &str) -> Journal {
    Caller::system()
        .journal("test.written", "test")
        .resource(label)
        .after(Some(
            json!({"label": label, "ratio": 0.1, "note": "naïve \"q\"\n"}),
        ))
}

/// Writes one entry through the real write path in a transaction of its own.
async fn write(c: &mut AsyncPgConnection, label: &str) {
    exec_on(c, "BEGIN").await;
    record(c, &journal(label)).await.unwrap();
    exec_on(c, "COMMIT").await;
}

fn pool(url: &str) -> Pool {
    connect(
        url,
        &PoolConfig {
            max_size: 40,
            ..Default::default()
        },
    )
    .unwrap()
}

async fn verify(pool: &Pool) -> VerifyReport {
    PgAuditLog::new(pool.clone()).verify_chain().await.unwrap()
}

/// Seals until nothing is left unsealed (every pass seals all that committed before it).
async fn seal_all(pool: &Pool) {
    seal_pass(pool).await.unwrap();
}

/// A database with `n` sealed entries labelled `e1`…`en`.
async fn sealed_db(n: usize) -> (TestDb, Pool) {
    let db = TestDb::new().await;
    let p = pool(&db.url);
    let mut c = conn(&db.url).await;
    for i in 1..=n {
        write(&mut c, &format!("e{i}")).await;
    }
    seal_all(&p).await;
    let r = verify(&p).await;
    assert!(r.ok && r.verified == n as u64, "{r:?}");
    (db, p)
}

async fn id_at(url: &str, seq: i64) -> Uuid {
    entries(url)
        .await
        .into_iter()
        .find(|e| e.seq == Some(seq))
        .unwrap()
        .id
}

/// What one writer did: its label, whether it committed, and when it began and finished.
struct Outcome {
    label: String,
    committed: bool,
    began: Instant,
    finished: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_sealed_into_one_gap_free_chain_in_commit_order() {
    let db = TestDb::new().await;
    let p = pool(&db.url);
    // Two sealers, as with two processes: they must never interleave.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sealers = [
        tokio::spawn(run_sealer(
            pool(&db.url),
            Duration::from_millis(15),
            stopped.clone(),
        )),
        tokio::spawn(run_sealer(
            pool(&db.url),
            Duration::from_millis(20),
            stopped.clone(),
        )),
    ];

    // A transaction that starts first (lower xid) and commits only after a later one has
    // committed and been sealed: commit order, not xid order, must decide.
    let mut old = conn(&db.url).await;
    exec_on(&mut old, "BEGIN").await;
    record(&mut old, &journal("held-open")).await.unwrap();
    let mut young = conn(&db.url).await;
    write(&mut young, "overtaker").await;

    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut writers = Vec::new();
    for i in 0..300usize {
        let p = p.clone();
        let outcomes = outcomes.clone();
        writers.push(tokio::spawn(async move {
            let mut c = p.get().await.unwrap();
            let label = format!("w{i}");
            let began = Instant::now();
            exec_on(&mut c, "BEGIN").await;
            record(&mut c, &journal(&label)).await.unwrap();
            // Spread the commits so that they interleave with the sealing passes and
            // commit in an order unrelated to their start.
            tokio::time::sleep(Duration::from_millis(((i * 7919) % 37) as u64)).await;
            let committed = i % 7 != 3;
            exec_on(&mut c, if committed { "COMMIT" } else { "ROLLBACK" }).await;
            outcomes.lock().unwrap().push(Outcome {
                label,
                committed,
                began,
                finished: Instant::now(),
            });
        }));
    }

    // The younger transaction gets sealed while the older one is still open.
    let deadline = Instant::now() + Duration::from_secs(20);
    while entries(&db.url)
        .await
        .iter()
        .any(|e| e.label.as_deref() == Some("overtaker") && e.seq.is_none())
    {
        assert!(Instant::now() < deadline, "the overtaker was never sealed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    exec_on(&mut old, "COMMIT").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &db.url,
        "SELECT count(*) AS n FROM audit_logs WHERE seq IS NULL",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "entries left unsealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    for s in sealers {
        s.await.unwrap();
    }

    let outcomes: Vec<Outcome> = std::mem::take(&mut *outcomes.lock().unwrap());
    let committed: Vec<&Outcome> = outcomes.iter().filter(|o| o.committed).collect();
    let chain = entries(&db.url).await;
    // Gap-free from 1, each committed entry exactly once, nothing that rolled back.
    assert_eq!(chain.len(), committed.len() + 2);
    for (i, e) in chain.iter().enumerate() {
        assert_eq!(e.seq, Some(i as i64 + 1), "gap at {i}");
    }
    let seq_of = |label: &str| {
        let found: Vec<i64> = chain
            .iter()
            .filter(|e| e.label.as_deref() == Some(label))
            .filter_map(|e| e.seq)
            .collect();
        assert!(found.len() <= 1, "{label} sealed twice");
        <[i64]>::first(&found).copied()
    };
    for o in outcomes.iter() {
        assert_eq!(
            seq_of(&o.label).is_some(),
            o.committed,
            "{} committed={}",
            o.label,
            o.committed
        );
    }
    assert!(seq_of("overtaker").unwrap() < seq_of("held-open").unwrap());
    // Whatever committed before another transaction began precedes it in the chain.
    for a in &committed {
        for b in &committed {
            if a.finished < b.began {
                assert!(
                    seq_of(&a.label) < seq_of(&b.label),
                    "{} committed before {} began but is sealed after it",
                    a.label,
                    b.label
                );
            }
        }
    }
    let r = verify(&p).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.verified, chain.len() as u64);
    assert_eq!(r.head.unwrap().seq, chain.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_row_is_found_at_its_entry() {
    let (db, p) = sealed_db(8).await;
    let id = id_at(&db.url, 4).await;
    exec_on(
        &mut conn(&db.url).await,
        "UPDATE audit_logs SET after_state = jsonb_set(after_state, '{ratio}', '0.2') WHERE seq = 4",
    )
    .await;
    let r = verify(&p).await;
    let bad = r.first_bad.unwrap();
    assert!(!r.ok);
    assert_eq!(r.verified, 3);
    assert_eq!(
        (bad.id, bad.seq, bad.reason.as_str()),
        (Some(id), Some(4), reason::CHANGED)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_rows_are_found_at_their_seq() {
    let (db, p) = sealed_db(8).await;
    exec_on(
        &mut conn(&db.url).await,
        "DELETE FROM audit_logs WHERE seq = 6",
    )
    .await;
    let bad = verify(&p).await.first_bad.unwrap();
    assert_eq!(
        (bad.id, bad.seq, bad.reason.as_str()),
        (None, Some(6), reason::DELETED)
    );

    let (db, p) = sealed_db(8).await;
    exec_on(
        &mut conn(&db.url).await,
        "DELETE FROM audit_logs WHERE seq = 8",
    )
    .await;
    let bad = verify(&p).await.first_bad.unwrap();
    assert_eq!((bad.seq, bad.reason.as_str()), (Some(8), reason::DELETED));
}

#[tokio::test(flavor = "multi_thread")]
async fn reordered_rows_are_found() {
    let (db, p) = sealed_db(8).await;
    let mut c = conn(&db.url).await;
    exec_on(&mut c, "UPDATE audit_logs SET seq = -1 WHERE seq = 3").await;
    exec_on(&mut c, "UPDATE audit_logs SET seq = 3 WHERE seq = 5").await;
    exec_on(&mut c, "UPDATE audit_logs SET seq = 5 WHERE seq = -1").await;
    let bad = verify(&p).await.first_bad.unwrap();
    assert_eq!((bad.seq, bad.reason.as_str()), (Some(3), reason::CHANGED));
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_rows_are_found() {
    // With a seq of its own after the head, and a hash that even chains.
    let (db, p) = sealed_db(5).await;
    let forged = Uuid::now_v7();
    exec_on(
        &mut conn(&db.url).await,
        &format!(
            "INSERT INTO audit_logs (id, actor_id, actor_type, action, resource_type, seq, hash)
             SELECT '{forged}', 'system', 'system', 'tenant.deleted', 'tenant', 6, hash
               FROM audit_logs WHERE seq = 5"
        ),
    )
    .await;
    let r = verify(&p).await;
    let bad = r.first_bad.unwrap();
    assert_eq!(r.verified, 5);
    assert_eq!(
        (bad.id, bad.seq, bad.reason.as_str()),
        (Some(forged), Some(6), reason::BEYOND_HEAD)
    );

    // Unsealed, dated in the past, slipped in behind the sealer.
    let (db, p) = sealed_db(5).await;
    let forged = Uuid::now_v7();
    exec_on(
        &mut conn(&db.url).await,
        &format!(
            "INSERT INTO audit_logs (id, actor_id, actor_type, action, resource_type, created_at)
             VALUES ('{forged}', 'system', 'system', 'tenant.deleted', 'tenant', now() - interval '1 hour')"
        ),
    )
    .await;
    let bad = verify(&p).await.first_bad.unwrap();
    assert_eq!(
        (bad.id, bad.seq, bad.reason.as_str()),
        (Some(forged), None, reason::UNSEALED)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_stays_ok_after_a_purge_and_the_checkpoint_is_audited() {
    let db = TestDb::new().await;
    let p = pool(&db.url);
    let mut c = conn(&db.url).await;
    for label in ["old1", "old2", "recent", "old3"] {
        write(&mut c, label).await;
    }
    // Backdated before sealing, so that the chain covers the old dates: the third entry
    // stays inside the window and so does everything after it in the chain.
    exec_on(
        &mut c,
        "UPDATE audit_logs SET created_at = now() - interval '400 days'
          WHERE after_state->>'label' LIKE 'old%'",
    )
    .await;
    seal_all(&p).await;
    let at2 = entries(&db.url).await;
    assert_eq!(at2[1].label.as_deref(), Some("old2"));
    // Old and never sealed: no chain holds it, age alone decides.
    write(&mut c, "old-unsealed").await;
    exec_on(
        &mut c,
        "UPDATE audit_logs SET created_at = now() - interval '400 days'
          WHERE after_state->>'label' = 'old-unsealed'",
    )
    .await;

    let long_ago = OffsetDateTime::now_utc() - time::Duration::days(3650);
    let counts = PgMaintenanceStore::new(p.clone())
        .purge(
            PurgeCutoffs {
                deliveries_and_events_before: long_ago,
                audit_before: OffsetDateTime::now_utc() - time::Duration::days(365),
                consent_before: long_ago,
            },
            Caller::system().journal("maintenance.purge_expired", "maintenance"),
        )
        .await
        .unwrap();
    assert_eq!(counts.audit_logs, 3, "old1, old2 and the unsealed one");
    let left: Vec<Option<String>> = entries(&db.url)
        .await
        .into_iter()
        .map(|e| e.label)
        .collect();
    assert_eq!(
        left,
        [Some("recent".to_owned()), Some("old3".to_owned()), None],
        "old3 stays: it follows an entry still inside the window"
    );

    seal_all(&p).await;
    let r = verify(&p).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.verified, 3);
    assert_eq!(r.head.unwrap().seq, 5);

    #[derive(QueryableByName)]
    struct Checkpoint {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        hash: String,
        #[diesel(sql_type = Text)]
        audited: String,
    }
    let cp: Checkpoint = diesel::sql_query(
        "SELECT c.seq, c.hash, a.after_state->'audit_checkpoint'->>'hash' AS audited
           FROM audit_checkpoint c, audit_logs a
          WHERE a.action = 'maintenance.purge_expired'
            AND (a.after_state->'audit_checkpoint'->>'seq')::bigint = c.seq",
    )
    .get_result(&mut c)
    .await
    .unwrap();
    assert_eq!(cp.seq, 2);
    assert_eq!(cp.hash, cp.audited);

    // Tampering after the checkpoint is still found.
    exec_on(&mut c, "UPDATE audit_logs SET action = 'x' WHERE seq = 3").await;
    let bad = verify(&p).await.first_bad.unwrap();
    assert_eq!((bad.seq, bad.reason.as_str()), (Some(3), reason::CHANGED));
}
