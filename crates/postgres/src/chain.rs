//! The sealer: gives committed audit entries their place in the hash chain, behind the
//! writers (README "Tamper-evident audit log").
//!
//! Writers insert entries unsealed and take no lock or counter. A sealing pass runs in one
//! REPEATABLE READ transaction: it locks the chain head (`audit_chain`, skipping the pass if
//! another process holds it), reads every entry its snapshot sees unsealed, and numbers
//! them after the head in `(xid, created_at, id)` order. Its snapshot sees exactly the
//! transactions that committed before it was taken, so:
//! - an entry that rolled back is never visible, hence never sealed;
//! - every committed entry is visible to the first pass that starts after its commit,
//!   which seals it (all of what it sees, in batches, in the same transaction);
//! - an entry sealed by a later pass committed after every entry of the earlier passes:
//!   the chain follows commit order at the granularity of a pass (~200 ms). Within one
//!   pass the transactions committed concurrently; PostgreSQL records no order among them,
//!   and the chain orders them by transaction id, then time and id.
//!
//! Unlike a watermark on the oldest running transaction, a long transaction (a large
//! purge, an idle session) does not hold the sealing of everyone else back.

use std::time::Duration;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use stratum_audit::AuditEntry;
use stratum_core::StoreError;
use uuid::Uuid;

use crate::audit::{AuditRow, AUDIT_COLUMNS};
use crate::cached::CachedExt;
use crate::error::map_query_error;
use crate::schema::audit_chain;
use crate::tx::read_conn;
use crate::Pool;

/// Entries per round trip while sealing: memory stays bounded whatever the backlog.
pub const SEAL_BATCH: usize = 1000;

/// One sealing pass on a pooled connection; returns how many entries it sealed (0 when
/// another process is sealing at the same moment).
pub async fn seal_pass(pool: &Pool) -> Result<u64, StoreError> {
    let mut conn = read_conn(pool).await?;
    seal_on(&mut conn).await
}

/// One sealing pass on `conn`, in a transaction of its own.
pub async fn seal_on(conn: &mut AsyncPgConnection) -> Result<u64, StoreError> {
    let result = conn
        .transaction::<_, DieselError, _>(async |conn| seal_in_tx(conn).await)
        .await;
    match result {
        Ok(n) => Ok(n),
        // Another sealer committed between our snapshot and our lock: it did the work.
        Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => Ok(0),
        Err(e) => Err(map_query_error(e)),
    }
}

async fn seal_in_tx(conn: &mut AsyncPgConnection) -> QueryResult<u64> {
    // One snapshot for the whole pass: what it sees is exactly what had committed when
    // the pass began.
    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .cached()
        .execute(conn)
        .await?;
    let head: Option<(i64, String)> = audit_chain::table
        .filter(audit_chain::id.eq(1))
        .select((audit_chain::seq, audit_chain::hash))
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()?;
    let Some((mut seq, mut hash)) = head else {
        return Ok(0);
    };
    diesel::sql_query(format!(
        "DECLARE stratum_seal NO SCROLL CURSOR FOR
         SELECT {AUDIT_COLUMNS} FROM audit_logs
          WHERE seq IS NULL
          ORDER BY xid NULLS FIRST, created_at, id"
    ))
    .cached()
    .execute(conn)
    .await?;
    let fetch = format!("FETCH FORWARD {SEAL_BATCH} FROM stratum_seal");
    let mut sealed = 0u64;
    loop {
        let rows: Vec<AuditRow> = diesel::sql_query(&fetch).cached().load(conn).await?;
        if rows.is_empty() {
            break;
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        let mut hashes: Vec<String> = Vec::with_capacity(rows.len());
        for row in rows {
            let mut entry = AuditEntry::from(row);
            seq += 1;
            stratum_audit::chain::seal(&mut entry, seq, &hash)
                .map_err(|e| DieselError::SerializationError(Box::new(e)))?;
            hash = entry.hash.unwrap_or_default();
            ids.push(entry.id);
            seqs.push(seq);
            hashes.push(hash.clone());
        }
        let n = diesel::sql_query(
            "UPDATE audit_logs a
                SET seq = u.seq, hash = u.hash
               FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS u(id, seq, hash)
              WHERE a.id = u.id AND a.seq IS NULL",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<BigInt>, _>(&seqs)
        .bind::<Array<Text>, _>(&hashes)
        .cached()
        .execute(conn)
        .await?;
        if n != ids.len() {
            // Someone changed these rows under the pass: seal nothing rather than leave a gap.
            tracing::error!(
                expected = ids.len(),
                updated = n,
                "audit sealing pass aborted: entries changed while being sealed"
            );
            return Err(DieselError::RollbackTransaction);
        }
        sealed += n as u64;
    }
    diesel::sql_query("CLOSE stratum_seal")
        .cached()
        .execute(conn)
        .await?;
    if sealed > 0 {
        diesel::update(audit_chain::table.filter(audit_chain::id.eq(1)))
            .set((
                audit_chain::seq.eq(seq),
                audit_chain::hash.eq(&hash),
                audit_chain::sealed_at.eq(diesel::dsl::now),
            ))
            .cached()
            .execute(conn)
            .await?;
    }
    Ok(sealed)
}

/// Seals every `interval` until `stop` turns true. Errors (the database away) are logged
/// once per outage and retried on the next tick.
pub async fn run_sealer(
    pool: Pool,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        match seal_pass(&pool).await {
            Ok(n) => {
                if failing {
                    tracing::info!("audit sealing resumed");
                    failing = false;
                }
                if n > 0 {
                    tracing::debug!(sealed = n, "audit entries sealed");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "audit sealing failed; retrying");
                    failing = true;
                }
            }
        }
    }
}
