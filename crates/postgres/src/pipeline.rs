//! Transactions sent as pipelines: `BEGIN`, the statements and `COMMIT` travel together
//! instead of waiting for one another's answers.
//!
//! Such a transaction is opened and ended by its own statements, not by diesel's
//! transaction manager (which would spend a round trip on each of `BEGIN` and `COMMIT`).
//! Every path therefore ends it: with `COMMIT`, with `ROLLBACK`, or, when the connection
//! can no longer say which, by closing the connection instead of returning it to the pool.
//! A statement that fails aborts the transaction; the server then ignores the statements
//! after it, and the pipelined `COMMIT` ends it as a rollback.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::cached::CachedExt;
use crate::PooledConn;

/// A pooled connection that goes back to the pool only once its transaction is known to
/// have ended; otherwise it is closed when dropped.
pub(crate) struct Owned {
    conn: Option<PooledConn>,
    /// Set once the transaction is known to have ended.
    pub(crate) ended: bool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(conn) = self.conn.take() {
                drop(deadpool::managed::Object::take(conn));
            }
        }
    }
}

impl Owned {
    pub(crate) fn new(conn: PooledConn) -> Self {
        Self {
            conn: Some(conn),
            ended: false,
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "the connection is taken only by `drop`, after every use"
    )]
    pub(crate) fn conn(&self) -> &AsyncPgConnection {
        self.conn.as_deref().expect("held until dropped")
    }

    /// Ends the transaction with `ROLLBACK`; the connection stays usable when that worked.
    pub(crate) async fn rollback(&mut self) {
        let mut c = self.conn();
        self.ended = diesel::sql_query("ROLLBACK")
            .cached()
            .execute(&mut c)
            .await
            .is_ok();
    }
}

/// `BEGIN`, to be sent with the transaction's first statements.
pub(crate) async fn begin(conn: &AsyncPgConnection) -> diesel::QueryResult<usize> {
    let mut c = conn;
    diesel::sql_query("BEGIN").cached().execute(&mut c).await
}

/// `COMMIT`, to be sent with the transaction's last statements: when one of them failed,
/// the server has already aborted the transaction and this ends it as a rollback.
pub(crate) async fn commit(conn: &AsyncPgConnection) -> diesel::QueryResult<usize> {
    let mut c = conn;
    diesel::sql_query("COMMIT").cached().execute(&mut c).await
}
