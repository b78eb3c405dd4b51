//! What handlers share.

use stratum_postgres::Pool;

/// Shared application state.
pub struct AppState {
    /// The database pool.
    pub pool: Pool,
}
