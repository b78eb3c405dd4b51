//! Tenant writes against a real PostgreSQL: the writes to one tenant that queue behind a
//! transaction in progress run together in the next one, each with its own version and
//! audit entry, and each failing alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use stratum_postgres::{connect, PgTenantStore};
use stratum_tenancy::{TenancyError, Tenant, TenantChange, TenantStore};
use stratum_testkit::fixtures::tenant;
use stratum_testkit::sql::exec;
use stratum_testkit::TestDb;
use uuid::Uuid;

use common::rename;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Tenant, TenancyError>> + Send + 'a>>;

/// Polls `f` once: a write joins its tenant's queue before its first await.
fn poll_once(f: &mut Pending<'_>) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(matches!(f.as_mut().poll(&mut cx), Poll::Pending));
}

#[derive(QueryableByName)]
struct Entry {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    before: String,
    #[diesel(sql_type = BigInt)]
    tx: i64,
}

/// The tenant's audit entries in commit order: the name each wrote, the version it
/// replaced, and its transaction (numbered from 0).
async fn entries(url: &str, id: Uuid) -> Vec<Entry> {
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT after_state->>'name' AS name, before_state->>'version' AS before,
                dense_rank() OVER (ORDER BY xid::text::bigint) - 1 AS tx
           FROM audit_logs WHERE resource_id = $1 ORDER BY xid::text::bigint, created_at, id",
    )
    .bind::<Text, _>(id.to_string())
    .load(&mut c)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_transaction_commit_together_in_order() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "hot").await;
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());

    // The first write holds the row until the others have queued behind it.
    let (go, wait) = mpsc::channel::<()>();
    let first: TenantChange = {
        let inner = rename(id, "w0", None);
        Box::new(move |t: &Tenant| {
            wait.recv().unwrap();
            inner(t)
        })
    };
    let mut writes: Vec<Pending> = vec![store.modify(id, first)];
    poll_once(&mut writes[0]);
    for i in 1..=10 {
        writes.push(store.modify(id, rename(id, &format!("w{i}"), None)));
        poll_once(writes.last_mut().unwrap());
    }
    go.send(()).unwrap();
    let mut versions = Vec::new();
    for w in writes {
        versions.push(w.await.unwrap().version);
    }
    // Each write has its own version, in the order they arrived.
    assert_eq!(versions, (2..=12).collect::<Vec<i64>>());

    let log = entries(&db.url, id).await;
    let names: Vec<&str> = log.iter().map(|e| e.name.as_str()).collect();
    let expected: Vec<String> = (0..=10).map(|i| format!("w{i}")).collect();
    assert_eq!(names, expected);
    // Each entry replaced the state the one before it left.
    let befores: Vec<i64> = log.iter().map(|e| e.before.parse().unwrap()).collect();
    assert_eq!(befores, (1..=11).collect::<Vec<i64>>());
    // The first ran alone; the ten that queued behind it committed in one transaction.
    let txs: Vec<i64> = log.iter().map(|e| e.tx).collect();
    assert_eq!(txs, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!((now.name.as_str(), now.version), ("w10", 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_in_a_batch_fails_alone() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "hot").await;
    tenant(&db.url, "taken").await;
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());

    let (go, wait) = mpsc::channel::<()>();
    let first: TenantChange = {
        let inner = rename(id, "a", None);
        Box::new(move |t: &Tenant| {
            wait.recv().unwrap();
            inner(t)
        })
    };
    let refused: TenantChange = Box::new(|_: &Tenant| Err(TenancyError::Stale));
    let unchanged: TenantChange = Box::new(|_: &Tenant| Ok(None));
    let mut writes: Vec<Pending> = vec![
        store.modify(id, first),
        store.modify(id, rename(id, "b", Some("b_slug"))),
        store.modify(id, rename(id, "c", Some("taken"))),
        store.modify(id, refused),
        store.modify(id, rename(id, "d", None)),
        store.modify(id, unchanged),
    ];
    for w in &mut writes {
        poll_once(w);
    }
    go.send(()).unwrap();
    let mut results = Vec::new();
    for w in writes {
        results.push(w.await);
    }
    let ok = |i: usize| {
        let t = results[i].as_ref().unwrap();
        (t.name.clone(), t.slug.clone(), t.version)
    };
    assert_eq!(ok(0), ("a".into(), "hot".into(), 2));
    assert_eq!(ok(1), ("b".into(), "b_slug".into(), 3));
    assert!(
        matches!(&results[2], Err(TenancyError::Conflict(m)) if m.contains("taken")),
        "{:?}",
        results[2]
    );
    assert!(matches!(results[3], Err(TenancyError::Stale)));
    // The taken slug left nothing behind: the next write starts from b's state.
    assert_eq!(ok(4), ("d".into(), "b_slug".into(), 4));
    assert_eq!(ok(5), ("d".into(), "b_slug".into(), 4));

    let log = entries(&db.url, id).await;
    let names: Vec<&str> = log.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "d"]);
    let txs: Vec<i64> = log.iter().map(|e| e.tx).collect();
    assert_eq!(txs, [0, 1, 1]);
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (now.name.as_str(), now.slug.as_str(), now.version),
        ("d", "b_slug", 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_on_a_tenant_archived_meanwhile_find_it_gone() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "hot").await;
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());
    // The first write's change runs under the row lock: it says so, waits, and changes
    // nothing.
    let (locked, is_locked) = tokio::sync::oneshot::channel::<()>();
    let (go, wait) = mpsc::channel::<()>();
    let first: TenantChange = Box::new(move |_: &Tenant| {
        locked.send(()).unwrap();
        wait.recv().unwrap();
        Ok(None)
    });
    let mut writes: Vec<Pending> = vec![store.modify(id, first)];
    poll_once(&mut writes[0]);
    let mut queued: Vec<Pending> = (0..3)
        .map(|i| store.modify(id, rename(id, &format!("q{i}"), None)))
        .collect();
    for w in &mut queued {
        poll_once(w);
    }
    // The batch runs on its own task: this one only waits for answers.
    is_locked.await.unwrap();
    // An archive on another connection waits on the row lock in PostgreSQL; the batch of
    // the queued writes asks for it once the first commits. PostgreSQL does not promise
    // which of the two gets the row next.
    let url = db.url.clone();
    let archive = tokio::spawn(async move {
        exec(
            &url,
            &format!(
                "UPDATE tenants SET status = 'archived', deleted_at = now() WHERE id = '{id}'"
            ),
        )
        .await;
    });
    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    loop {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let w: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result(&mut c)
        .await
        .unwrap();
        if w.n > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    go.send(()).unwrap();
    assert_eq!(writes.remove(0).await.unwrap().version, 1);
    archive.await.unwrap();
    // Either the batch ran first and every queued write committed, or it found the
    // tenant archived and none did: nothing is half-done.
    let mut results = Vec::new();
    for w in queued {
        results.push(w.await);
    }
    let log = entries(&db.url, id).await;
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!(now.status.as_str(), "archived");
    if results.iter().all(Result::is_ok) {
        let versions: Vec<i64> = results
            .iter()
            .map(|r| r.as_ref().unwrap().version)
            .collect();
        assert_eq!(versions, [2, 3, 4]);
        assert_eq!(log.len(), 3);
        assert_eq!(now.name, "q2");
    } else {
        for r in &results {
            assert!(matches!(r, Err(TenancyError::TenantNotFound)), "{r:?}");
        }
        assert!(log.is_empty());
        assert_eq!((now.name.as_str(), now.version), ("T", 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_with_a_taken_slug_is_a_conflict_and_writes_nothing() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "mine").await;
    tenant(&db.url, "taken").await;
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());
    let r = store.modify(id, rename(id, "x", Some("taken"))).await;
    assert!(
        matches!(&r, Err(TenancyError::Conflict(m)) if m.contains("taken")),
        "{r:?}"
    );
    assert!(
        entries(&db.url, id).await.is_empty(),
        "no audit entry for a refused write"
    );
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (now.name.as_str(), now.slug.as_str(), now.version),
        ("T", "mine", 1)
    );
    // The next write goes through.
    let ok = store
        .modify(id, rename(id, "y", Some("free")))
        .await
        .unwrap();
    assert_eq!((ok.slug.as_str(), ok.version), ("free", 2));
}

/// A change adding one to the tenant's `metadata.n`: a lost update shows as a smaller sum.
fn increment(id: Uuid) -> TenantChange {
    Box::new(move |before: &Tenant| {
        let mut after = before.clone();
        let n = before.metadata["n"].as_i64().unwrap_or(0) + 1;
        after.metadata = serde_json::json!({ "n": n });
        let journal = stratum_core::Caller::system()
            .journal("tenant.updated", "tenant")
            .resource(id)
            .tenant(Some(id))
            .before(Some(serde_json::json!({"version": before.version})))
            .after(Some(serde_json::json!({"name": after.name, "n": n})));
        Ok(Some((after, journal)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_writes_from_many_processes_to_one_tenant_lose_nothing() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "hot").await;
    // One store per process: no queue is shared, each write is a transaction of its own.
    let stores: Vec<PgTenantStore> = (0..8)
        .map(|_| PgTenantStore::new(connect(&db.url, &Default::default()).unwrap()))
        .collect();
    let writers = stores.into_iter().map(|store| {
        tokio::spawn(async move {
            for _ in 0..10 {
                store.modify(id, increment(id)).await.unwrap();
            }
        })
    });
    for w in futures_util::future::join_all(writers).await {
        w.unwrap();
    }
    let store = PgTenantStore::new(connect(&db.url, &Default::default()).unwrap());
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!((now.metadata["n"].as_i64(), now.version), (Some(80), 81));
    let mut replaced: Vec<i64> = entries(&db.url, id)
        .await
        .iter()
        .map(|e| e.before.parse().unwrap())
        .collect();
    replaced.sort_unstable();
    assert_eq!(
        replaced,
        (1..=80).collect::<Vec<i64>>(),
        "one entry per version"
    );
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// Whether the pool's one connection is outside any transaction block, as the server's
/// own view of its backend (`pg_stat_activity`, read from another connection) says.
async fn outside_a_transaction(url: &str, pool: &stratum_postgres::Pool) -> bool {
    let pid = {
        let mut c = pool.get().await.unwrap();
        diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut c)
            .await
            .unwrap()
            .pid
    };
    let states = stratum_testkit::sql::texts(
        url,
        &format!("SELECT state AS t FROM pg_stat_activity WHERE pid = {pid}"),
    )
    .await;
    states == ["idle"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lone_write_ends_its_transaction_whatever_its_outcome() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "mine").await;
    tenant(&db.url, "taken").await;
    let pool = connect(
        &db.url,
        &stratum_postgres::PoolConfig {
            max_size: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let store = PgTenantStore::new(pool.clone());
    let refuse: TenantChange = Box::new(|_: &Tenant| Err(TenancyError::Stale));
    let nothing: TenantChange = Box::new(|_: &Tenant| Ok(None));
    let writes: Vec<(Uuid, TenantChange)> = vec![
        (id, rename(id, "a", None)),
        (id, refuse),
        (id, nothing),
        (id, rename(id, "b", Some("taken"))),
        (Uuid::now_v7(), rename(id, "c", None)),
        (id, rename(id, "d", None)),
    ];
    let mut outcomes = Vec::new();
    for (target, change) in writes {
        outcomes.push(store.modify(target, change).await.map(|t| t.version));
        assert!(
            outside_a_transaction(&db.url, &pool).await,
            "a transaction was left open after {outcomes:?}"
        );
    }
    assert!(matches!(outcomes[0], Ok(2)), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(TenancyError::Stale)),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[2], Ok(2)), "{outcomes:?}");
    assert!(
        matches!(outcomes[3], Err(TenancyError::Conflict(_))),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[4], Err(TenancyError::TenantNotFound)),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[5], Ok(3)), "{outcomes:?}");
    let names: Vec<String> = entries(&db.url, id)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["a", "d"],
        "only the two writes that took effect are audited"
    );
}
