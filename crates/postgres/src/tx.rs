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
            $crate::tx::traced(::diesel_async::AsyncConnection::transaction::<
                _,
                $crate::tx::TxError<$err>,
                _,
            >(
                c,
                async move |$conn: &mut ::diesel_async::AsyncPgConnection| $body,
            ))
            .await
            .map_err($crate::tx::TxError::into_domain)
        } else {
            match $pool.get().await {
                Err(e) => Err(<$err>::from($crate::error::map_pool_error(e))),
                Ok(mut pooled) => {
                    let c: &mut ::diesel_async::AsyncPgConnection = &mut pooled;
                    // The block's value is kept aside until the commit answers: a connection
                    // lost at COMMIT leaves the outcome open, and a commit that took effect
                    // must answer what the block made, not "nothing changed".
                    let mut kept = ::core::option::Option::None;
                    let slot = &mut kept;
                    // Wake-ups wait for the commit (see `wake`).
                    let ((out, due), journaled) = $crate::tx::traced($crate::tx::journaled(
                        $crate::wake::deferred(::diesel_async::AsyncConnection::transaction::<
                            _,
                            $crate::tx::TxError<$err>,
                            _,
                        >(
                            c,
                            async move |$conn: &mut ::diesel_async::AsyncPgConnection| {
                                let value: ::core::result::Result<_, $crate::tx::TxError<$err>> =
                                    async { $body }.await;
                                *slot = ::core::option::Option::Some(value?);
                                ::core::result::Result::Ok(())
                            },
                        )),
                    ))
                    .await;
                    drop(pooled);
                    let out = match (out, kept) {
                        (::core::result::Result::Ok(()), ::core::option::Option::Some(v)) => {
                            ::core::result::Result::Ok(v)
                        }
                        (
                            ::core::result::Result::Err($crate::tx::TxError::Db(e)),
                            ::core::option::Option::Some(v),
                        ) => $crate::tx::settle_commit(&$pool, e, journaled, v).await,
                        (::core::result::Result::Err(e), _) => ::core::result::Result::Err(e),
                        (::core::result::Result::Ok(()), ::core::option::Option::None) => {
                            ::core::result::Result::Err($crate::tx::TxError::Db(
                                ::diesel::result::Error::BrokenTransactionManager,
                            ))
                        }
                    };
                    if due && out.is_ok() {
                        $crate::wake::committed(&$pool);
                    }
                    out.map_err($crate::tx::TxError::into_domain)
                }
            }
        }
    }};
}

/// Runs `f` (the transaction of an [`in_tx!`](crate::in_tx)) inside a database client span,
/// a child of the request's span when the request is traced; outside a traced request
/// (background work) and when no trace export is on, it makes no span.
pub async fn traced<F: std::future::Future>(f: F) -> F::Output {
    let span = child_span(|| {
        tracing::info_span!(
            target: "stratum::trace",
            "transaction",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "transaction",
        )
    });
    tracing::Instrument::instrument(f, span).await
}

/// The span of one journal write (the audit entry, its event and its deliveries), under the
/// running transaction's span when there is one.
pub fn journal_span() -> tracing::Span {
    child_span(|| {
        tracing::info_span!(
            target: "stratum::trace",
            "journal write",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "SELECT",
            db.stored_procedure.name = "stratum_record",
        )
    })
}

/// `make()` when a span is current (a traced request), else no span.
fn child_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        make()
    }
}

tokio::task_local! {
    /// Set while a transaction of [`in_tx!`](crate::in_tx) runs: the id of the last audit entry it wrote.
    static JOURNALED: std::cell::Cell<Option<uuid::Uuid>>;
}

/// Runs `f` (a transaction) noting the audit entries it writes; returns its output and the
/// id of the last one.
pub async fn journaled<F: std::future::Future>(f: F) -> (F::Output, Option<uuid::Uuid>) {
    JOURNALED
        .scope(std::cell::Cell::new(None), async move {
            let out = f.await;
            (out, JOURNALED.with(std::cell::Cell::get))
        })
        .await
}

/// Records that the running task's transaction wrote the audit entry `id`.
pub fn note_journaled(id: uuid::Uuid) {
    let _outside_in_tx = JOURNALED.try_with(|c| c.set(Some(id)));
}

/// How long a write whose COMMIT lost its connection waits for a primary to tell whether
/// the commit took effect: a failover's worth (Patroni's `ttl` plus a loop).
pub const COMMIT_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The outcome of a transaction whose block ran to its end (`value`) but whose COMMIT
/// failed with `e`. A refused commit is a failure; a commit whose connection was lost may
/// have taken effect (the server flushed it, then went away, possibly after its standby
/// had it). When the transaction wrote an audit entry (`journaled`), the primary the pool
/// reaches next answers whether that entry exists: the write took effect (its value is
/// the answer) or it did not (unavailable, nothing changed). Left open past
/// [`COMMIT_SETTLE`], the error stands.
pub async fn settle_commit<T, E>(
    pool: &Pool,
    e: DieselError,
    journaled: Option<uuid::Uuid>,
    value: T,
) -> Result<T, TxError<E>> {
    let Some(id) = journaled else {
        return Err(TxError::Db(e));
    };
    if !crate::error::outcome_unknown(&e) {
        return Err(TxError::Db(e));
    }
    tracing::warn!(error = %e, audit_id = %id, "connection lost at commit; asking the primary whether it took effect");
    match settle(pool, |conn| {
        Box::pin(async move {
            entry_exists(conn, id)
                .await
                .map(|found| found.then_some(()))
        })
    })
    .await
    {
        Settled::Committed(()) => {
            tracing::warn!(audit_id = %id, "the commit took effect");
            Ok(value)
        }
        Settled::NotCommitted => {
            tracing::warn!(audit_id = %id, "the commit did not take effect");
            Err(TxError::Db(e))
        }
        Settled::Unknown => {
            tracing::error!(audit_id = %id, "the outcome of a commit is unknown");
            Err(TxError::Db(e))
        }
    }
}

/// What the primary said of a commit whose answer was lost.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<T> {
    /// Its witness is there: the commit took effect.
    Committed(T),
    /// Its witness is not there: the commit did not take effect.
    NotCommitted,
    /// No primary answered within [`COMMIT_SETTLE`].
    Unknown,
}

/// Asks the primary the pool reaches next, until one answers or [`COMMIT_SETTLE`] has
/// passed, whether the witness of a commit whose answer was lost is there: `probe` reads
/// the row only that commit can have written (an audit entry, an idempotency key) and
/// answers `Some` when it is there. A failover's promoted standby holds every commit the
/// old primary acknowledged to itself under synchronous replication, so its answer is
/// final.
pub async fn settle<T, P>(pool: &Pool, probe: P) -> Settled<T>
where
    P: for<'c> Fn(
        &'c mut diesel_async::AsyncPgConnection,
    ) -> futures_util::future::BoxFuture<'c, diesel::QueryResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + COMMIT_SETTLE;
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut conn) = pool.get().await {
            match probe(&mut conn).await {
                Ok(Some(found)) => return Settled::Committed(found),
                Ok(None) => return Settled::NotCommitted,
                Err(_) => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Settled::Unknown
}

async fn entry_exists(
    conn: &mut diesel_async::AsyncPgConnection,
    id: uuid::Uuid,
) -> diesel::QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let f: Found = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM audit_logs WHERE id = $1) AS found")
            .bind::<diesel::sql_types::Uuid, _>(id),
        conn,
    )
    .await?;
    Ok(f.found)
}

/// Checks out a connection for reads.
pub async fn read_conn(pool: &Pool) -> Result<crate::PooledConn, StoreError> {
    pool.get().await.map_err(map_pool_error)
}
