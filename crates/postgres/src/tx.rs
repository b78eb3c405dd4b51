//! Running a unit of work in one transaction with errors kept apart: driver errors become
//! the port's `StoreError`, domain errors pass through.

use diesel::result::Error as DieselError;
use stratum_core::StoreError;

use crate::error::{map_pool_error, map_query_error};
use crate::Pool;

/// An error inside a transaction: from the driver, or a domain rule the adapter checked.
#[derive(Debug)]
pub enum TxError<E> {
    /// The driver failed.
    Db(DieselError),
    /// A rule failed; the transaction rolls back.
    Domain(E),
}

impl<E> From<DieselError> for TxError<E> {
    fn from(e: DieselError) -> Self {
        Self::Db(e)
    }
}

impl<E: From<StoreError>> TxError<E> {
    /// Flattens into the domain error.
    pub fn into_domain(self) -> E {
        match self {
            Self::Db(e) => E::from(map_query_error(e)),
            Self::Domain(e) => e,
        }
    }
}

tokio::task_local! {
    /// The connection of a request-wide transaction (an `Idempotency-Key` request): while
    /// set, every `in_tx!` block of the task runs on it as a savepoint, so the change, its
    /// audit entry, its event and the stored response commit together or not at all.
    static AMBIENT: std::sync::Arc<tokio::sync::Mutex<crate::PooledConn>>;
}

/// Runs `f` with every `in_tx!` of its task inside the transaction open on `conn`.
pub async fn with_ambient<F: std::future::Future>(
    conn: std::sync::Arc<tokio::sync::Mutex<crate::PooledConn>>,
    f: F,
) -> F::Output {
    AMBIENT.scope(conn, f).await
}

/// The request-wide transaction's connection, when the task runs inside one.
pub fn ambient() -> Option<std::sync::Arc<tokio::sync::Mutex<crate::PooledConn>>> {
    AMBIENT.try_with(Clone::clone).ok()
}

/// Runs a block in one transaction on a pooled connection:
/// `in_tx!(pool, DomainError, |conn| { ...; Ok(value) })` evaluates to
/// `Result<T, DomainError>`. Inside a request-wide transaction ([`with_ambient`]) the
/// block runs as a savepoint of it instead, and commits only with it. Deliveries the block
/// makes due wake the workers after the commit ([`crate::wake`]).
#[macro_export]
macro_rules! in_tx {
    ($pool:expr, $err:ty, |$conn:ident| $body:block) => {{
        if let Some(shared) = $crate::tx::ambient() {
            let mut guard = shared.lock().await;
            let c: &mut ::diesel_async::AsyncPgConnection = &mut guard;
            ::diesel_async::AsyncConnection::transaction::<_, $crate::tx::TxError<$err>, _>(
                c,
                async move |$conn: &mut ::diesel_async::AsyncPgConnection| $body,
            )
            .await
            .map_err($crate::tx::TxError::into_domain)
        } else {
            match $pool.get().await {
                Err(e) => Err(<$err>::from($crate::error::map_pool_error(e))),
                Ok(mut pooled) => {
                    let c: &mut ::diesel_async::AsyncPgConnection = &mut pooled;
                    // Wake-ups wait for the commit (see `wake`).
                    let (out, due) =
                        $crate::wake::deferred(::diesel_async::AsyncConnection::transaction::<
                            _,
                            $crate::tx::TxError<$err>,
                            _,
                        >(
                            c,
                            async move |$conn: &mut ::diesel_async::AsyncPgConnection| $body,
                        ))
                        .await;
                    drop(pooled);
                    if due && out.is_ok() {
                        $crate::wake::committed(&$pool);
                    }
                    out.map_err($crate::tx::TxError::into_domain)
                }
            }
        }
    }};
}

/// Checks out a connection for reads.
pub async fn read_conn(pool: &Pool) -> Result<crate::PooledConn, StoreError> {
    pool.get().await.map_err(map_pool_error)
}
