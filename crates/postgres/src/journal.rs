//! The one write path every mutation shares: the audit domain's [`AuditSink`] port on
//! PostgreSQL — audit entry + outbox event + fan-out, inside the mutation's own transaction.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_audit::{AuditRecord, AuditSink, AuditTrail, Redaction};
use stratum_core::{Journal, StoreError};

use crate::cached::CachedExt;
use crate::error::map_query_error;

/// The channel workers `LISTEN` on; a notification means new deliveries are due. The SQL
/// function `stratum_record` (migrations 6 and 19) notifies the same channel by name.
pub const DELIVERY_CHANNEL: &str = "stratum_deliveries";

/// The audit domain's write port on PostgreSQL: `tx` is a connection with the change's
/// transaction open on it.
///
/// Appends the audit entry and, when the record carries an event, inserts it and one
/// pending delivery per active webhook subscribed to it that the event's
/// [`Audience`](stratum_audit::Audience) hears — global webhooks, webhooks of the event's
/// tenant or one of its ancestors (the tenant's path as the transaction sees it) or of the
/// extra audience — then has the workers woken once the transaction commits (after the
/// commit inside [`in_tx!`](crate::in_tx), else by a `NOTIFY` in the transaction). One
/// round trip: the set operation is the `stratum_record` function.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgAuditSink;

#[async_trait]
impl AuditSink<AsyncPgConnection> for PgAuditSink {
    async fn append(
        &self,
        tx: &mut AsyncPgConnection,
        record: &AuditRecord,
    ) -> Result<u64, StoreError> {
        append(tx, record).await.map_err(map_query_error)
    }
}

/// Stratum's redaction rules, built once.
static RULES: LazyLock<Redaction> = LazyLock::new(Redaction::stratum);

/// Stratum's audit trail: [`PgAuditSink`] with [`Redaction::stratum`].
pub fn stratum_trail() -> AuditTrail<AsyncPgConnection> {
    AuditTrail::new(Arc::new(PgAuditSink), RULES.clone())
}

/// Appends `record` on `conn`, keeping the driver's error (for adapters that handle it
/// inside their own transaction blocks). Takes the connection shared, so a caller can
/// pipeline it with the change's own statement (both sent before either answer arrives).
pub async fn append(conn: &AsyncPgConnection, record: &AuditRecord) -> QueryResult<u64> {
    tracing::Instrument::instrument(append_traced(conn, record), crate::tx::journal_span()).await
}

async fn append_traced(conn: &AsyncPgConnection, record: &AuditRecord) -> QueryResult<u64> {
    let mut conn = conn;
    let event = record.event.as_ref();
    // Inside `in_tx!` the workers are woken after the commit; elsewhere, by the
    // transaction's own NOTIFY.
    let deferred = crate::wake::deferring();
    let fanned: Fanned = diesel::sql_query(
        "SELECT stratum_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) AS n",
    )
    .bind::<SqlUuid, _>(record.id)
    .bind::<Nullable<SqlUuid>, _>(record.tenant_id)
    .bind::<Text, _>(&record.actor_id)
    .bind::<Text, _>(&record.actor_type)
    .bind::<Text, _>(&record.action)
    .bind::<Text, _>(&record.resource_type)
    .bind::<Nullable<Text>, _>(&record.resource_id)
    .bind::<Nullable<Jsonb>, _>(&record.before_state)
    .bind::<Nullable<Jsonb>, _>(&record.after_state)
    .bind::<Jsonb, _>(&record.metadata)
    .bind::<SqlUuid, _>(event.map_or_else(stratum_core::new_id, |e| e.id))
    .bind::<Nullable<Text>, _>(event.map(|e| e.event_type.as_str()))
    .bind::<Nullable<SqlUuid>, _>(event.and_then(|e| e.tenant_id))
    .bind::<Nullable<Jsonb>, _>(event.map(|e| &e.payload))
    .bind::<Array<SqlUuid>, _>(event.map(|e| e.extra_audience.as_slice()).unwrap_or_default())
    // Notifies in the transaction only when no commit hook will (see `wake`).
    .bind::<Bool, _>(!deferred)
    // The request that made the event, for the delivery attempts' span links.
    .bind::<Nullable<Text>, _>(event.and_then(|_| stratum_core::trace_context::current()))
    .cached()
    .get_result(&mut conn)
    .await?;
    if fanned.n > 0 {
        crate::wake::mark();
    }
    crate::tx::note_journaled(record.id);
    Ok(fanned.n as u64)
}

/// `journal` as Stratum's audit trail records it (redaction rules applied), for
/// [`append`].
pub(crate) fn audit_record(journal: &Journal) -> AuditRecord {
    AuditRecord::from_journal(journal, &RULES)
}

/// Records `journal` through Stratum's audit trail (redaction rules applied) on the
/// connection of the mutation's open transaction; returns the number of deliveries.
pub async fn record(conn: &mut AsyncPgConnection, journal: &Journal) -> QueryResult<usize> {
    Ok(append(conn, &audit_record(journal)).await? as usize)
}

#[derive(QueryableByName)]
struct Fanned {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
