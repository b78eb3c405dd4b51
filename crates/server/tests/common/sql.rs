//! Raw SQL against a test database, for fixtures and for looking behind the API.

use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub async fn conn(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap()
}

pub async fn exec(url: &str, sql: &str) {
    let mut c = conn(url).await;
    diesel::sql_query(sql).execute(&mut c).await.unwrap();
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `sql` must select one bigint column named `n`.
pub async fn count(url: &str, sql: &str) -> i64 {
    let mut c = conn(url).await;
    let rows: Vec<Count> = diesel::sql_query(sql).load(&mut c).await.unwrap();
    rows[0].n
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

/// `sql` must select text columns named `t`.
pub async fn texts(url: &str, sql: &str) -> Vec<String> {
    let mut c = conn(url).await;
    let rows: Vec<Text> = diesel::sql_query(sql).load(&mut c).await.unwrap();
    rows.into_iter().map(|r| r.t).collect()
}
