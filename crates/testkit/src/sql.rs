//! Raw SQL against a test database: fixtures and looks behind the ports. Every helper
//! panics with the statement and the error when the statement fails.
//!
//! The plain names take the database URL and open a connection of their own; the `_on`
//! forms run on a connection the test holds (inside its transaction, if it opened one).

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// A connection of its own to `url`.
pub async fn conn(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"))
}

/// Runs `sql` (one or more statements) on `url`.
pub async fn exec(url: &str, sql: &str) {
    exec_on(&mut conn(url).await, sql).await;
}

/// Runs `sql` (one or more statements) on `c`.
pub async fn exec_on(c: &mut AsyncPgConnection, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The bigint column `n` of the first row `sql` selects on `url`.
pub async fn count(url: &str, sql: &str) -> i64 {
    count_on(&mut conn(url).await, sql).await
}

/// The bigint column `n` of the first row `sql` selects on `c`.
pub async fn count_on(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(sql)
        .load(c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .next()
        .unwrap_or_else(|| panic!("{sql}: no row"))
        .n
}

#[derive(QueryableByName)]
struct Texts {
    #[diesel(sql_type = Text)]
    t: String,
}

/// The text column `t` of every row `sql` selects on `url`.
pub async fn texts(url: &str, sql: &str) -> Vec<String> {
    texts_on(&mut conn(url).await, sql).await
}

/// The text column `t` of every row `sql` selects on `c`.
pub async fn texts_on(c: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    let rows: Vec<Texts> = diesel::sql_query(sql)
        .load(c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| r.t).collect()
}
