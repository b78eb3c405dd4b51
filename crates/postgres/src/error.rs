//! Translation of driver errors into the ports' errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;
use stratum_core::StoreError;

/// How long after a sign of a failover (a lost connection, a server that went read-only)
/// the pool checks each connection it hands out ([`crate::pool`]): long enough to sweep the
/// idle connections that still point at the old primary, short enough that the steady state
/// pays no round trip per checkout.
pub const FAULT_WINDOW: Duration = Duration::from_secs(30);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`] of the last sign of a failover, plus one (0: none yet).
static LAST_FAULT: AtomicU64 = AtomicU64::new(0);

/// Records a sign that the primary went away or was demoted.
pub fn note_fault() {
    let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    LAST_FAULT.store(ms.saturating_add(1), Ordering::Relaxed);
}

/// Whether a sign of a failover was seen within [`FAULT_WINDOW`].
pub fn recent_fault() -> bool {
    match LAST_FAULT.load(Ordering::Relaxed) {
        0 => false,
        at => {
            let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(at - 1) < FAULT_WINDOW.as_millis() as u64
        }
    }
}

/// A pool that cannot hand out a connection means the database is unreachable.
pub fn map_pool_error(e: PoolError) -> StoreError {
    // A pool merely busy (waiting for a free connection) is no sign of a failover; a
    // connection that could not be opened is.
    if !matches!(e, PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) {
        note_fault();
    }
    tracing::warn!(error = %e, "database connection unavailable");
    StoreError::Unavailable
}

/// Anything a query returns that the caller did not handle itself.
pub fn map_query_error(e: DieselError) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => {
            note_fault();
            StoreError::Unavailable
        }
        // A write on a server that is (now) a standby: the primary moved. The transaction
        // rolled back; the caller may try again once the pool has found the new primary.
        DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
            note_fault();
            tracing::warn!(error = %e, "database server is read-only (a standby)");
            StoreError::Unavailable
        }
        DieselError::DatabaseError(_, ref info) if is_connection_loss(info.message()) => {
            note_fault();
            tracing::warn!(error = %e, "database connection lost");
            StoreError::Unavailable
        }
        DieselError::DatabaseError(_, ref info) if is_standby(info.message()) => {
            note_fault();
            tracing::warn!(error = %e, "database server is a standby");
            StoreError::Unavailable
        }
        other => StoreError::internal(other),
    }
}

/// Whether `e` means the connection went away mid-statement (so a COMMIT's outcome is not
/// known from this side), as opposed to the server answering with an error.
pub fn outcome_unknown(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => true,
        DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => false,
        DieselError::DatabaseError(_, info) => is_connection_loss(info.message()),
        _ => false,
    }
}

/// Whether a driver message says the connection or the server went away (the server
/// shutting down or restarting, a broken socket) rather than that the query was wrong.
/// The driver reports these without a SQLSTATE diesel maps, so the text decides.
fn is_connection_loss(message: &str) -> bool {
    const LOSS: [&str; 10] = [
        "connection closed",
        "error communicating with the server",
        "error connecting to server",
        "terminating connection",
        "server closed the connection",
        "the database system is shutting down",
        "the database system is starting up",
        "connection reset",
        "broken pipe",
        "error communicating with database",
    ];
    let m = message.to_ascii_lowercase();
    LOSS.iter().any(|l| m.contains(l))
}

/// Whether a driver message says the server is a standby (refused a write, or is still
/// recovering): the primary moved, and the statement took no effect.
fn is_standby(message: &str) -> bool {
    const STANDBY: [&str; 3] = [
        "read-only transaction",
        "recovery is in progress",
        "the database system is in recovery mode",
    ];
    let m = message.to_ascii_lowercase();
    STANDBY.iter().any(|l| m.contains(l))
}

/// True when `e` is a unique-constraint violation.
pub fn is_unique_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// True when `e` is a foreign-key violation.
pub fn is_fk_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_loss_is_unavailable_other_errors_internal() {
        for m in [
            "connection closed",
            "FATAL: terminating connection due to administrator command",
            "the database system is shutting down",
            "error communicating with the server: Connection reset by peer (os error 104)",
            "cannot execute UPDATE in a read-only transaction",
            "FATAL: the database system is in recovery mode",
        ] {
            let e = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(m.to_owned()));
            assert!(matches!(map_query_error(e), StoreError::Unavailable), "{m}");
        }
        let e = DieselError::DatabaseError(
            DatabaseErrorKind::ReadOnlyTransaction,
            Box::new("cannot execute INSERT in a read-only transaction".to_owned()),
        );
        assert!(matches!(map_query_error(e), StoreError::Unavailable));
        assert!(recent_fault(), "a read-only server is a sign of a failover");
        let e = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("syntax error at or near \"SELEC\"".to_owned()),
        );
        match map_query_error(e) {
            // The driver's error is kept as the source, not flattened into text.
            StoreError::Internal(source) => assert!(
                matches!(
                    source.downcast_ref::<DieselError>(),
                    Some(DieselError::DatabaseError(DatabaseErrorKind::Unknown, _))
                ),
                "{source:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
