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
        other => StoreError::Internal(other.to_string()),
    }
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
