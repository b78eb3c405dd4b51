//! Idempotency keys on PostgreSQL. A request with a key runs inside one transaction that
//! first takes a transaction-scoped advisory lock on (principal, key) — a second request
//! with the same key while the first runs cannot take it: 409 — then looks the key up, and,
//! when it is new, runs the whole request on that transaction (see [`crate::tx::with_ambient`])
//! and inserts the key with its response just before the commit. The change and its key
//! commit together or not at all. A commit whose answer was lost (the primary went away)
//! is settled like any other ([`crate::tx::settle`]): the key's row on the primary the pool
//! reaches next says whether the request took effect, and what it answered.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use stratum_core::StoreError;
use tokio::sync::Mutex;

use crate::error::{map_pool_error, map_query_error, outcome_unknown};
use crate::tx::{settle, Settled};
use crate::{Pool, PooledConn};

/// How long a key is kept (and honoured).
pub const KEY_TTL_HOURS: i64 = 24;

/// A response stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// hex SHA-256 of method, path and body of the first request.
    pub fingerprint: String,
    /// Its status.
    pub status: u16,
    /// Its body.
    pub body: String,
}

/// What a key lookup found.
pub enum Lookup {
    /// Another request with this key holds it now.
    InProgress,
    /// The key was used before (within 24 h).
    Stored(StoredResponse),
    /// A new key: the request runs on this transaction.
    New(KeyTx),
}

/// The open transaction of a request with a new key; holds the key's lock.
pub struct KeyTx {
    conn: Option<Arc<Mutex<PooledConn>>>,
    pool: Pool,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    fingerprint: String,
    #[diesel(sql_type = Integer)]
    status: i32,
    #[diesel(sql_type = Text)]
    response_body: String,
}

async fn rollback(conn: &mut AsyncPgConnection) {
    if let Err(e) = AnsiTransactionManager::rollback_transaction(conn).await {
        tracing::warn!(error = %e, "rolling back an idempotency-key transaction failed");
    }
}

/// The response stored under `(principal, key)` within its time to live.
async fn stored(
    conn: &mut AsyncPgConnection,
    principal: &str,
    key: &str,
) -> QueryResult<Option<StoredResponse>> {
    let row: Option<Row> = diesel::sql_query(format!(
        "SELECT fingerprint, status, response_body FROM idempotency_keys
          WHERE principal = $1 AND key = $2
            AND created_at > now() - interval '{KEY_TTL_HOURS} hours'"
    ))
    .bind::<Text, _>(principal)
    .bind::<Text, _>(key)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|r| StoredResponse {
        fingerprint: r.fingerprint,
        status: u16::try_from(r.status).unwrap_or(500),
        body: r.response_body,
    }))
}

/// Opens the transaction for `(principal, key)` and looks the key up.
pub async fn begin(pool: &Pool, principal: &str, key: &str) -> Result<Lookup, StoreError> {
    let mut pooled = pool.get().await.map_err(map_pool_error)?;
    let conn: &mut AsyncPgConnection = &mut pooled;
    AnsiTransactionManager::begin_transaction(conn)
        .await
        .map_err(map_query_error)?;
    let found = async {
        let l: Locked = diesel::sql_query(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('stratum.idempotency.' || $1 || '.' || $2, 0)) AS locked",
        )
        .bind::<Text, _>(principal)
        .bind::<Text, _>(key)
        .get_result(conn)
        .await?;
        if !l.locked {
            return Ok(None);
        }
        Ok::<_, diesel::result::Error>(Some(stored(conn, principal, key).await?))
    }
    .await;
    match found {
        Err(e) => {
            rollback(conn).await;
            Err(map_query_error(e))
        }
        Ok(None) => {
            rollback(conn).await;
            Ok(Lookup::InProgress)
        }
        Ok(Some(Some(r))) => {
            rollback(conn).await;
            Ok(Lookup::Stored(r))
        }
        Ok(Some(None)) => Ok(Lookup::New(KeyTx {
            conn: Some(Arc::new(Mutex::new(pooled))),
            pool: pool.clone(),
        })),
    }
}

impl KeyTx {
    /// The connection the request's `in_tx!` blocks share.
    pub fn shared(&self) -> Option<Arc<Mutex<PooledConn>>> {
        self.conn.clone()
    }

    /// Stores the key with its response and commits everything the request did; answers
    /// the response now stored under the key. That is `response`, except when the commit's
    /// answer was lost: then the primary the pool reaches next is asked what the key holds
    /// ([`crate::tx::settle`]). The request took effect when the key holds a response to
    /// the same request (same fingerprint), which is the answer: `response` itself, or the
    /// one of a retry that committed in the meantime, since this request's commit did
    /// not. A key without such a response means the request changed nothing: unavailable.
    pub async fn commit(
        mut self,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<StoredResponse, StoreError> {
        let Some(shared) = self.conn.take() else {
            return Err(StoreError::internal(
                "idempotency transaction already finished",
            ));
        };
        let mut guard = shared.lock().await;
        let conn: &mut AsyncPgConnection = &mut guard;
        // An expired key that purge has not removed yet is replaced.
        let inserted = diesel::sql_query(
            "INSERT INTO idempotency_keys (principal, key, fingerprint, status, response_body)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (principal, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
                    response_body = EXCLUDED.response_body, created_at = now()",
        )
        .bind::<Text, _>(principal)
        .bind::<Text, _>(key)
        .bind::<Text, _>(&response.fingerprint)
        .bind::<Integer, _>(i32::from(response.status))
        .bind::<Text, _>(&response.body)
        .execute(conn)
        .await;
        if let Err(e) = inserted {
            rollback(conn).await;
            return Err(map_query_error(e));
        }
        let committed = AnsiTransactionManager::commit_transaction(conn).await;
        drop(guard);
        drop(shared);
        let e = match committed {
            Ok(()) => return Ok(response.clone()),
            Err(e) if outcome_unknown(&e) => e,
            Err(e) => return Err(map_query_error(e)),
        };
        tracing::warn!(error = %e, "connection lost at the commit of an idempotency key; asking the primary whether it took effect");
        let (principal, key) = (principal.to_owned(), key.to_owned());
        let settled = settle(&self.pool, move |conn| {
            let (principal, key) = (principal.clone(), key.clone());
            Box::pin(async move { stored(conn, &principal, &key).await })
        })
        .await;
        match settled {
            Settled::Committed(s) if s.fingerprint == response.fingerprint => {
                tracing::warn!("the commit of an idempotency key took effect");
                Ok(s)
            }
            Settled::Committed(_) | Settled::NotCommitted => {
                tracing::warn!("the commit of an idempotency key did not take effect");
                Err(map_query_error(e))
            }
            Settled::Unknown => {
                tracing::error!("the outcome of the commit of an idempotency key is unknown");
                Err(map_query_error(e))
            }
        }
    }

    /// Rolls back everything the request did; the key stays unused.
    pub async fn rollback(mut self) {
        if let Some(shared) = self.conn.take() {
            let mut guard = shared.lock().await;
            rollback(&mut guard).await;
        }
    }
}

impl Drop for KeyTx {
    fn drop(&mut self) {
        // Neither committed nor rolled back (a panic or a dropped future): the connection
        // must not go back to the pool inside an open transaction. Detach it; closing it
        // rolls the transaction back on the server.
        if let Some(shared) = self.conn.take() {
            if let Ok(m) = Arc::try_unwrap(shared) {
                let _ = deadpool::managed::Object::take(m.into_inner());
            }
        }
    }
}
