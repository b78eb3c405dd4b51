//! One write to one tenant in two round trips: `BEGIN` travels with the row's locking
//! read, and the new row, its journal and `COMMIT` travel together.
//!
//! The transaction is opened and ended by this module's own statements, not by diesel's
//! transaction manager (which would spend a round trip on each of `BEGIN` and `COMMIT`).
//! Every path therefore ends it: with `COMMIT`, with `ROLLBACK`, or, when the connection
//! can no longer say which, by closing the connection instead of returning it to the pool.
//! A request-wide transaction (an `Idempotency-Key` request) and batches of several writes
//! keep the general path (`in_tx!`), which nests savepoints.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::StoreError;
use stratum_tenancy::{TenancyError, Tenant, TenantChange};
use uuid::Uuid;

use super::slug_taken;
use crate::cached::CachedExt;
use crate::error::map_pool_error;
use crate::journal;
use crate::tx::TxError;
use crate::{Pool, PooledConn};

/// A pooled connection that goes back to the pool only once its transaction is known to
/// have ended; otherwise it is closed when dropped.
struct Owned {
    conn: Option<PooledConn>,
    ended: bool,
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
    #[allow(
        clippy::expect_used,
        reason = "the connection is taken only by `drop`, after every use"
    )]
    fn conn(&self) -> &AsyncPgConnection {
        self.conn.as_deref().expect("held until dropped")
    }

    /// Ends the transaction with `ROLLBACK`; the connection stays usable when that worked.
    async fn rollback(&mut self) {
        let mut c = self.conn();
        self.ended = diesel::sql_query("ROLLBACK")
            .cached()
            .execute(&mut c)
            .await
            .is_ok();
    }
}

/// Applies `change` to tenant `id` (see the module documentation): the state it replaces
/// is read under the row lock in the transaction that writes it; the change, its audit
/// entry, its event and its deliveries commit together or not at all.
pub(crate) async fn modify_one(
    pool: &Pool,
    id: Uuid,
    change: TenantChange,
) -> Result<Tenant, TenancyError> {
    let conn = pool
        .get()
        .await
        .map_err(|e| TenancyError::from(map_pool_error(e)))?;
    let mut owned = Owned {
        conn: Some(conn),
        ended: false,
    };
    let (out, due) = crate::tx::traced(crate::wake::deferred(write(&mut owned, id, change))).await;
    // Back to the pool (or closed) before anything else waits.
    drop(owned);
    let out = match out {
        Ok(Written::Committed(tenant)) => Ok(tenant),
        Ok(Written::Unchanged(result)) => return result,
        Err(Failure::Commit(e, entry, tenant)) => {
            crate::tx::settle_commit(pool, e, Some(entry), *tenant).await
        }
        Err(Failure::Other(e)) => Err(e),
    };
    if due && out.is_ok() {
        crate::wake::committed(pool);
    }
    out.map_err(TxError::into_domain)
}

/// What a write came to once its transaction ended.
enum Written {
    /// The change committed.
    Committed(Tenant),
    /// Nothing was written (the change refused, made no change, or the tenant is gone);
    /// the transaction rolled back.
    Unchanged(Result<Tenant, TenancyError>),
}

enum Failure {
    /// Everything before `COMMIT` succeeded and `COMMIT` failed: the outcome is settled by
    /// asking the primary whether the audit entry (its id) exists (see `settle_commit`);
    /// the tenant is what a commit wrote.
    Commit(diesel::result::Error, Uuid, Box<Tenant>),
    Other(TxError<TenancyError>),
}

impl From<TxError<TenancyError>> for Failure {
    fn from(e: TxError<TenancyError>) -> Self {
        Self::Other(e)
    }
}

async fn write(owned: &mut Owned, id: Uuid, change: TenantChange) -> Result<Written, Failure> {
    let mut c1 = owned.conn();
    let begin = diesel::sql_query("BEGIN").cached().execute(&mut c1);
    let read = super::tenants::lock_row(owned.conn(), id);
    let (begun, row) = futures_util::future::join(begin, read).await;
    if let Err(e) = begun {
        // No transaction is known to be open: the connection is closed, not reused.
        return Err(TxError::Db(e).into());
    }
    let row = match row.optional() {
        Ok(Some(row)) => row,
        Ok(None) => {
            owned.rollback().await;
            return Ok(Written::Unchanged(Err(TenancyError::TenantNotFound)));
        }
        Err(e) => {
            owned.rollback().await;
            return Err(TxError::Db(e).into());
        }
    };
    let current = match row.into_domain() {
        Ok(t) => t,
        Err(e) => {
            owned.rollback().await;
            return Err(TxError::Domain(TenancyError::from(e)).into());
        }
    };
    let (mut next, journal) = match change(&current) {
        Ok(Some(c)) => c,
        Ok(None) => {
            owned.rollback().await;
            return Ok(Written::Unchanged(Ok(current)));
        }
        Err(e) => {
            owned.rollback().await;
            return Ok(Written::Unchanged(Err(e)));
        }
    };
    next.version = current.version + 1;
    let record = journal::audit_record(&journal);
    let conn = owned.conn();
    let mut c3 = conn;
    let update = super::tenants::update_row(conn, &next);
    let append = journal::append(conn, &record);
    // Sent with the statements before it: when one of them failed, the server has
    // already aborted the transaction and this `COMMIT` ends it as a rollback.
    let commit = diesel::sql_query("COMMIT").cached().execute(&mut c3);
    let (updated, appended, committed) = futures_util::future::join3(update, append, commit).await;
    if let Err(e) = committed {
        // A statement before COMMIT answered with an error: the transaction was aborted
        // and nothing took effect. Otherwise (everything answered, or the connection went
        // away mid-pipeline, possibly after the server had the COMMIT) the primary is
        // asked (see `settle_commit`). Either way this connection is not reused.
        let refused = |r: Option<&diesel::result::Error>| {
            r.is_some_and(|x| !crate::error::outcome_unknown(x))
        };
        if !refused(updated.as_ref().err()) && !refused(appended.as_ref().err()) {
            return Err(Failure::Commit(e, record.id, Box::new(next)));
        }
    } else {
        owned.ended = true;
    }
    match (updated, appended) {
        (Err(e), _) => Err(slug_taken(e, &next.slug).into()),
        (_, Err(e)) => Err(TxError::Db(e).into()),
        // The row is locked by this transaction from the read on: the update found it.
        (Ok(1), Ok(_)) => Ok(Written::Committed(next)),
        (Ok(n), Ok(_)) => Err(
            TxError::Domain(TenancyError::Store(StoreError::internal(format!(
                "tenant {id}: the locked row's update changed {n} rows"
            ))))
            .into(),
        ),
    }
}
