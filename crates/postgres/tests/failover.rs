//! The pool across a failover, against a real PostgreSQL: a pooled connection to a server
//! that stopped taking writes (a demoted primary) is dropped rather than reused, a server
//! that cannot be reached makes writes unavailable (changing nothing) until it is back, and
//! a multi-host URL skips the servers that do not answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::{Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_core::{Caller, StoreError};
use stratum_postgres::{connect, idempotency, PgTenantStore, Pool, PoolConfig};
use stratum_tenancy::{TenancyError, Tenant, TenantChange, TenantStore};
use stratum_testkit::cutter::{CommitCutter, Cut};
use stratum_testkit::TestDb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use uuid::Uuid;

#[derive(QueryableByName)]
struct Session {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    read_only: String,
}

async fn session(pool: &Pool) -> Session {
    let mut c = pool.get().await.unwrap();
    diesel::sql_query(
        "SELECT pg_backend_pid() AS pid, current_setting('transaction_read_only') AS read_only",
    )
    .get_result(&mut c)
    .await
    .unwrap()
}

async fn tenant(url: &str) -> Uuid {
    let id = Uuid::now_v7();
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(format!(
        "INSERT INTO tenants (id, name, slug, ancestry_path, depth, metadata)
         VALUES ('{id}', 'T', 't{}', '/{id}/', 0, '{{}}')",
        id.simple()
    ))
    .execute(&mut c)
    .await
    .unwrap();
    id
}

fn rename(id: Uuid, name: &str) -> TenantChange {
    let name = name.to_owned();
    Box::new(move |before: &Tenant| {
        let mut after = before.clone();
        after.name = name;
        let journal = Caller::system()
            .journal("tenant.updated", "tenant")
            .resource(id)
            .tenant(Some(id))
            .after(Some(json!({"name": after.name})));
        Ok(Some((after, journal)))
    })
}

async fn name_of(url: &str, id: Uuid) -> String {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    let n: Name = diesel::sql_query(format!("SELECT name FROM tenants WHERE id = '{id}'"))
        .get_result(&mut c)
        .await
        .unwrap();
    n.name
}

#[tokio::test]
async fn a_pooled_connection_that_went_read_only_is_dropped_not_reused() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let cfg = PoolConfig {
        max_size: 1,
        ..Default::default()
    };
    let pool = connect(&db.url, &cfg).unwrap();
    let store = PgTenantStore::new(pool.clone());

    // The one pooled connection now behaves like a session on a demoted primary.
    let first = session(&pool).await;
    {
        let mut c = pool.get().await.unwrap();
        diesel::sql_query("SET default_transaction_read_only = on")
            .execute(&mut c)
            .await
            .unwrap();
    }
    // Precondition: the pool hands that same, now read-only, connection out again.
    let again = session(&pool).await;
    assert_eq!(again.pid, first.pid, "the pool reuses its idle connection");
    assert_eq!(again.read_only, "on");

    // A write on it is refused by the server: unavailable, not an internal error, and
    // nothing changed.
    match store.modify(id, rename(id, "refused")).await {
        Err(TenancyError::Store(StoreError::Unavailable)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(name_of(&db.url, id).await, "T");

    // The next checkout does not get that connection back: a new one, which takes writes.
    let next = session(&pool).await;
    assert_ne!(next.pid, first.pid, "the read-only connection was dropped");
    assert_eq!(next.read_only, "off");
    store.modify(id, rename(id, "accepted")).await.unwrap();
    assert_eq!(name_of(&db.url, id).await, "accepted");
}

/// A TCP relay to the database that can be cut (every connection closed, new ones
/// refused) and restored on the same port: the primary as the pool sees it during a
/// failover.
struct Relay {
    port: u16,
    upstream: String,
    task: Mutex<Option<JoinHandle<()>>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: &str) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Arc::new(Self {
            port: listener.local_addr().unwrap().port(),
            upstream: upstream.to_owned(),
            task: Mutex::new(None),
            links: Arc::new(Mutex::new(Vec::new())),
        });
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let links = self.links.clone();
        *self.task.lock().await = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links.lock().await.push(link);
            }
        }));
    }

    async fn cut(&self) {
        if let Some(t) = self.task.lock().await.take() {
            t.abort();
            let _ = t.await;
        }
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener).await;
    }
}

#[tokio::test]
async fn while_the_primary_is_unreachable_writes_are_unavailable_then_resume() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let server = stratum_testkit::server_url();
    let authority = server
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let relay = Relay::start(&authority).await;
    let via_relay = db
        .url
        .replace(&authority, &format!("127.0.0.1:{}", relay.port));
    assert_ne!(via_relay, db.url, "the URL goes through the relay");
    let pool = connect(
        &via_relay,
        &PoolConfig {
            max_size: 2,
            wait_timeout: Duration::from_secs(2),
        },
    )
    .unwrap();
    let store = PgTenantStore::new(pool.clone());
    store.modify(id, rename(id, "before")).await.unwrap();
    assert_eq!(pool.status().size, 1, "precondition: a pooled connection");

    relay.cut().await;
    for _ in 0..3 {
        match store.modify(id, rename(id, "during")).await {
            Err(TenancyError::Store(StoreError::Unavailable)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(
        name_of(&db.url, id).await,
        "before",
        "no failed write took effect"
    );

    relay.restore().await;
    // The same pool, never rebuilt, writes again.
    store.modify(id, rename(id, "after")).await.unwrap();
    assert_eq!(name_of(&db.url, id).await, "after");
}

#[tokio::test]
async fn a_multi_host_url_skips_a_server_that_does_not_answer() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let server = stratum_testkit::server_url();
    let authority = server
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    // Port 1 on the loopback refuses connections: a member that is down.
    let url = format!(
        "{}?target_session_attrs=read-write",
        db.url
            .replace(&authority, &format!("127.0.0.1:1,{authority}"))
    );
    assert!(url.contains("127.0.0.1:1,"), "{url}");
    let store = PgTenantStore::new(connect(&url, &PoolConfig::default()).unwrap());
    store.modify(id, rename(id, "multi")).await.unwrap();
    assert_eq!(name_of(&db.url, id).await, "multi");
}

async fn through_cutter(db: &TestDb) -> (PgTenantStore, CommitCutter) {
    let (pool, cutter) = pool_through_cutter(db).await;
    (PgTenantStore::new(pool), cutter)
}

async fn pool_through_cutter(db: &TestDb) -> (Pool, CommitCutter) {
    let cutter = CommitCutter::start().await.unwrap();
    let url = cutter.url(&db.url);
    assert_ne!(url, db.url, "the URL goes through the relay");
    (connect(&url, &PoolConfig::default()).unwrap(), cutter)
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_but_took_effect_answers_its_result() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let (store, cutter) = through_cutter(&db).await;
    store.modify(id, rename(id, "first")).await.unwrap();

    cutter.arm(Cut::AfterCommit);
    let out = store.modify(id, rename(id, "committed")).await;
    // Precondition: the relay did lose the connection at that COMMIT, after the server had it.
    assert!(cutter.met(), "the COMMIT was cut");
    assert_eq!(
        name_of(&db.url, id).await,
        "committed",
        "the commit took effect"
    );
    // So the caller is told it did, with the value the change made.
    let tenant = out.expect("a commit that took effect is not an error");
    assert_eq!(tenant.name, "committed");
}

#[tokio::test]
async fn a_commit_lost_before_the_server_had_it_is_unavailable_and_changed_nothing() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let (store, cutter) = through_cutter(&db).await;
    store.modify(id, rename(id, "first")).await.unwrap();

    cutter.arm(Cut::BeforeCommit);
    let out = store.modify(id, rename(id, "rolled_back")).await;
    assert!(cutter.met(), "the COMMIT was cut");
    match out {
        Err(TenancyError::Store(StoreError::Unavailable)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(name_of(&db.url, id).await, "first");
}

/// The response a request with an Idempotency-Key would store.
fn response(body: &str) -> idempotency::StoredResponse {
    idempotency::StoredResponse {
        fingerprint: "f".repeat(64),
        status: 200,
        body: body.to_owned(),
    }
}

/// Runs a rename of `id` the way a request with the Idempotency-Key `key` does: inside the
/// key's transaction, then commits it with its response, with the COMMIT treated by `cut`.
async fn keyed_rename(
    pool: &Pool,
    cutter: &CommitCutter,
    cut: Cut,
    id: Uuid,
    key: &str,
    name: &str,
) -> Result<idempotency::StoredResponse, StoreError> {
    let store = PgTenantStore::new(pool.clone());
    let idempotency::Lookup::New(tx) = idempotency::begin(pool, "ha", key).await.unwrap() else {
        panic!("a new key");
    };
    let renamed = stratum_postgres::tx::with_ambient(
        tx.shared().unwrap(),
        store.modify(id, rename(id, name)),
    )
    .await
    .unwrap();
    assert_eq!(renamed.name, name);
    cutter.arm(cut);
    let out = tx.commit("ha", key, &response(name)).await;
    // Precondition: the relay treated that COMMIT as armed.
    assert!(cutter.met(), "the COMMIT met the relay");
    out
}

async fn keys_held(url: &str, key: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Body {
        #[diesel(sql_type = Text)]
        response_body: String,
    }
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    let rows: Vec<Body> = diesel::sql_query(format!(
        "SELECT response_body FROM idempotency_keys WHERE principal = 'ha' AND key = '{key}'"
    ))
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|b| b.response_body).collect()
}

#[tokio::test]
async fn an_idempotent_request_whose_commit_answer_was_lost_but_took_effect_is_acknowledged() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let (pool, cutter) = pool_through_cutter(&db).await;

    let out = keyed_rename(&pool, &cutter, Cut::AfterCommit, id, "k1", "keyed").await;
    // The commit took effect: the change and its key are there ...
    assert_eq!(
        name_of(&db.url, id).await,
        "keyed",
        "the commit took effect"
    );
    assert_eq!(keys_held(&db.url, "k1").await, vec!["keyed".to_owned()]);
    // ... so the request is acknowledged with the response its key holds, not refused
    // (a refusal would tell the client that nothing changed).
    assert_eq!(
        out.expect("a commit that took effect is acknowledged"),
        response("keyed")
    );
    // And a retry replays exactly that response.
    match idempotency::begin(&pool, "ha", "k1").await.unwrap() {
        idempotency::Lookup::Stored(s) => assert_eq!(s, response("keyed")),
        _ => panic!("the key is stored"),
    }
}

#[tokio::test]
async fn an_idempotent_request_whose_commit_was_lost_before_the_server_had_it_changed_nothing() {
    let db = TestDb::new().await;
    let id = tenant(&db.url).await;
    let (pool, cutter) = pool_through_cutter(&db).await;

    let out = keyed_rename(&pool, &cutter, Cut::BeforeCommit, id, "k2", "lost").await;
    match out {
        Err(StoreError::Unavailable) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(name_of(&db.url, id).await, "T", "nothing changed");
    assert!(
        keys_held(&db.url, "k2").await.is_empty(),
        "the key is unused"
    );
    // A retry with the key runs the request anew (it is not a replay of anything).
    let again = keyed_rename(&pool, &cutter, Cut::Pass, id, "k2", "retried").await;
    assert_eq!(again.unwrap(), response("retried"));
    assert_eq!(name_of(&db.url, id).await, "retried");
}
