//! Statements kept prepared per connection, against a real PostgreSQL: a [`Cached`]
//! statement is parsed once per connection and answers like the plain one; the write path
//! of a tenant change (its `UPDATE` and the journal's `stratum_record` call) parses nothing
//! after its first run, and no statement is left prepared per write.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use diesel::sql_types::Integer;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_core::EventType;
use stratum_postgres::{connect, CachedExt, PgTenantStore, PoolConfig};
use stratum_tenancy::TenantStore;
use stratum_testkit::fixtures::{tenant, WebhookRow};
use stratum_testkit::sql::{conn, count_on};
use stratum_testkit::TestDb;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = Integer)]
    n: i32,
}

const DOUBLE: &str = "SELECT $1::int * 2 AS n";

async fn prepared_like(c: &mut AsyncPgConnection, pattern: &str) -> i64 {
    count_on(
        c,
        &format!(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE '{pattern}'"
        ),
    )
    .await
}

#[tokio::test]
async fn a_cached_statement_is_prepared_once_and_answers_like_the_plain_one() {
    let db = TestDb::new().await;
    let mut c = conn(&db.url).await;
    for i in 0..3 {
        let plain: N = diesel::sql_query(DOUBLE)
            .bind::<Integer, _>(i)
            .get_result(&mut c)
            .await
            .unwrap();
        let kept: N = diesel::sql_query(DOUBLE)
            .bind::<Integer, _>(i)
            .cached()
            .get_result(&mut c)
            .await
            .unwrap();
        assert_eq!((plain.n, kept.n), (i * 2, i * 2));
    }
    // The plain statement was closed after each use; the kept one is there once.
    assert_eq!(prepared_like(&mut c, DOUBLE).await, 1);
}

#[tokio::test]
async fn a_tenant_write_parses_nothing_after_its_first_run() {
    let db = TestDb::new().await;
    let id = tenant(&db.url, "acme").await;
    WebhookRow::new().tenant(Some(id)).insert(&db.url).await;
    // One connection, so every write and the check below share its statements.
    let pool = connect(
        &db.url,
        &PoolConfig {
            max_size: 1,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let store = PgTenantStore::new(pool.clone());
    let mut kept = Vec::new();
    for i in 0..4 {
        let change = common::rename_then(id, &format!("Acme {i}"), None, |journal, after| {
            journal.emit(
                EventType::from_static("tenant.updated"),
                json!({"id": after.id, "name": after.name}),
            )
        });
        store.modify(id, change).await.unwrap();
        let mut c = pool.get().await.unwrap();
        kept.push(prepared_like(&mut c, "%").await);
        assert_eq!(prepared_like(&mut c, "SELECT stratum_record(%").await, 1);
        assert_eq!(prepared_like(&mut c, "UPDATE \"tenants\" SET%").await, 1);
    }
    // Writes after the first add no statement to the connection.
    assert!(
        kept.windows(2).all(|w| w[0] == w[1]),
        "prepared statements per write: {kept:?}"
    );
}
