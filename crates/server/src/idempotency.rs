//! The HTTP layer's idempotency-key port on PostgreSQL: each request with a new key runs
//! on one pooled connection's transaction, which every store write of the request joins
//! (`stratum_postgres::tx::with_ambient`).

use async_trait::async_trait;
use futures_util::future::LocalBoxFuture;
use stratum_api::idempotency::{
    Handled, IdempotencyStore, KeyLookup, KeyTransaction, StoredResponse,
};
use stratum_core::StoreError;
use stratum_postgres::idempotency::{self as pg, KeyTx, Lookup};
use stratum_postgres::Pool;

/// [`IdempotencyStore`] over the pool.
#[derive(Clone)]
pub struct PgIdempotency {
    pool: Pool,
}

impl PgIdempotency {
    /// Keys in the database `pool` connects to.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl IdempotencyStore for PgIdempotency {
    async fn begin(&self, principal: &str, key: &str) -> Result<KeyLookup, StoreError> {
        Ok(match pg::begin(&self.pool, principal, key).await? {
            Lookup::InProgress => KeyLookup::InProgress,
            Lookup::Stored(s) => KeyLookup::Stored(StoredResponse {
                fingerprint: s.fingerprint,
                status: s.status,
                body: s.body,
            }),
            Lookup::New(tx) => KeyLookup::New(Box::new(PgKeyTransaction(tx))),
        })
    }
}

struct PgKeyTransaction(KeyTx);

#[async_trait]
impl KeyTransaction for PgKeyTransaction {
    fn run<'a>(&'a self, work: LocalBoxFuture<'a, Handled>) -> LocalBoxFuture<'a, Handled> {
        match self.0.shared() {
            Some(conn) => Box::pin(stratum_postgres::tx::with_ambient(conn, work)),
            None => work,
        }
    }

    async fn commit(
        self: Box<Self>,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<StoredResponse, StoreError> {
        let stored = pg::StoredResponse {
            fingerprint: response.fingerprint.clone(),
            status: response.status,
            body: response.body.clone(),
        };
        let held = self.0.commit(principal, key, &stored).await?;
        Ok(StoredResponse {
            fingerprint: held.fingerprint,
            status: held.status,
            body: held.body,
        })
    }

    async fn rollback(self: Box<Self>) {
        self.0.rollback().await;
    }
}
