//! Translation of driver errors into the ports' errors.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;
use stratum_core::StoreError;

/// A pool that cannot hand out a connection means the database is unreachable.
pub fn map_pool_error(e: PoolError) -> StoreError {
    tracing::warn!(error = %e, "database connection unavailable");
    StoreError::Unavailable
}

/// Anything a query returns that the caller did not handle itself.
pub fn map_query_error(e: DieselError) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => StoreError::Unavailable,
        DieselError::DatabaseError(_, ref info) if is_connection_loss(info.message()) => {
            tracing::warn!(error = %e, "database connection lost");
            StoreError::Unavailable
        }
        other => StoreError::internal(other),
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
        ] {
            let e = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(m.to_owned()));
            assert!(matches!(map_query_error(e), StoreError::Unavailable), "{m}");
        }
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
