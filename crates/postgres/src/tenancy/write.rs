//! One write to one tenant in two round trips: `BEGIN` travels with the row's locking
//! read, and the new row, its journal and `COMMIT` travel together (see
//! [`crate::pipeline`]). A request-wide transaction (an `Idempotency-Key` request) and batches of several writes
//! keep the general path (`in_tx!`), which nests savepoints.

use diesel::prelude::*;
use stratum_core::StoreError;
use stratum_tenancy::{TenancyError, Tenant, TenantChange};
use uuid::Uuid;

use super::slug_taken;
use crate::error::map_pool_error;
use crate::journal;
use crate::pipeline::Owned;
use crate::tx::TxError;
use crate::Pool;

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
    let mut owned = Owned::new(conn);
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
    let begin = crate::pipeline::begin(owned.conn());
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
    let update = super::tenants::update_row(conn, &next);
    let append = journal::append(conn, &record);
    let commit = crate::pipeline::commit(conn);
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
