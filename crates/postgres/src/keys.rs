//! The database's active encryption key: which key stored secrets are (to be) under.
//!
//! Writers of ciphertext take [`SECRETS_LOCK`] shared and check the key their value names
//! inside their transaction; a rotation takes it exclusively, so it waits for the writers
//! in flight and new writers wait for its commit, then see the new active key. No value
//! sealed with a superseded key can commit after a rotation.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::StoreError;

use crate::cached::CachedExt;
use crate::tx::TxError;

/// Advisory lock key held shared by writers of secrets and exclusively by a rotation.
pub const SECRETS_LOCK: i64 = 0x5354_5241_5455_4d01;
/// Advisory lock key that admits one rotation at a time (tried, never waited for).
pub const ROTATION_LOCK: i64 = 0x5354_5241_5455_4d02;

#[derive(QueryableByName)]
struct ActiveKey {
    #[diesel(sql_type = Text)]
    active_key_id: String,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// The active key id; `claim` becomes it when none is recorded yet.
pub(crate) async fn active_key_id(
    conn: &mut AsyncPgConnection,
    claim: &str,
) -> QueryResult<String> {
    diesel::sql_query(
        "INSERT INTO encryption_keys_state (singleton, active_key_id) VALUES (true, $1)
         ON CONFLICT (singleton) DO NOTHING",
    )
    .bind::<Text, _>(claim)
    .execute(conn)
    .await?;
    let row: ActiveKey =
        diesel::sql_query("SELECT active_key_id FROM encryption_keys_state WHERE singleton")
            .get_result(conn)
            .await?;
    Ok(row.active_key_id)
}

/// The active key id, `None` while none is recorded.
pub(crate) async fn recorded_key_id(conn: &mut AsyncPgConnection) -> QueryResult<Option<String>> {
    let row: Option<ActiveKey> =
        diesel::sql_query("SELECT active_key_id FROM encryption_keys_state WHERE singleton")
            .cached()
            .get_result(conn)
            .await
            .optional()?;
    Ok(row.map(|r| r.active_key_id))
}

/// Call first inside a transaction that writes the envelope `stored`: waits for a rotation
/// in flight, then fails with `KeyNotActive` unless `stored` names the active key.
pub(crate) async fn ensure_active_key<E: From<StoreError>>(
    conn: &mut AsyncPgConnection,
    stored: &str,
) -> Result<(), TxError<E>> {
    diesel::sql_query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind::<BigInt, _>(SECRETS_LOCK)
        .cached()
        .execute(conn)
        .await?;
    let Some(key_id) = stratum_crypto::envelope_key_id(stored) else {
        return Err(TxError::Domain(E::from(StoreError::internal(
            "refusing to store a secret that is not an encrypted envelope",
        ))));
    };
    // The row exists from start-up on; only a database no process has started against yet
    // needs the claim (an INSERT), so the common case is one SELECT.
    let active = match recorded_key_id(conn).await? {
        Some(active) => active,
        None => active_key_id(conn, key_id).await?,
    };
    if active == key_id {
        Ok(())
    } else {
        Err(TxError::Domain(E::from(StoreError::KeyNotActive {
            active_key_id: active,
        })))
    }
}

/// Inside a rotation's transaction: true when no other rotation runs (and none can start
/// until this transaction ends), then waits for the writers of secrets in flight.
pub(crate) async fn lock_for_rotation(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let got: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(ROTATION_LOCK)
        .get_result(conn)
        .await?;
    if !got.locked {
        return Ok(false);
    }
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(SECRETS_LOCK)
        .execute(conn)
        .await?;
    Ok(true)
}

/// Records `key_id` as the active key (a rotation, inside its transaction).
pub(crate) async fn set_active_key_id(
    conn: &mut AsyncPgConnection,
    key_id: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO encryption_keys_state (singleton, active_key_id, rotated_at)
         VALUES (true, $1, now())
         ON CONFLICT (singleton) DO UPDATE SET active_key_id = $1, rotated_at = now()",
    )
    .bind::<Text, _>(key_id)
    .execute(conn)
    .await?;
    Ok(())
}
