//! Identifiers.

use uuid::Uuid;

/// A new time-ordered (UUIDv7) identifier for a row.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
