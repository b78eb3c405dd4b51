//! The one write path every mutation shares: audit entry + outbox event + fan-out, inside
//! the mutation's own transaction.

use diesel::prelude::*;
use diesel::sql_types::{Array, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_core::{new_id, Journal};

/// The channel workers `LISTEN` on; a notification means new deliveries are due. The SQL
/// function `stratum_record` (migration 6) notifies the same channel by name.
pub const DELIVERY_CHANNEL: &str = "stratum_deliveries";

/// Appends the audit entry and, when the journal carries an event, inserts it and one
/// pending delivery per active webhook subscribed to it whose tenant is the event's
/// tenant, one of its ancestors (or of `extra_audience`), or global, then notifies the
/// workers. Must be called on the connection of the mutation's open transaction; returns
/// the number of deliveries. One round trip: the work is the `stratum_record` function.
pub async fn record(conn: &mut AsyncPgConnection, journal: &Journal) -> QueryResult<usize> {
    let meta = json!({
        "request_id": journal.meta.request_id,
        "ip": journal.meta.ip,
        "user_agent": journal.meta.user_agent,
    });
    let event = journal.event.as_ref();
    let fanned: Fanned = diesel::sql_query(
        "SELECT stratum_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) AS n",
    )
    .bind::<SqlUuid, _>(new_id())
    .bind::<Nullable<SqlUuid>, _>(journal.tenant_id)
    .bind::<Text, _>(&journal.actor_id)
    .bind::<Text, _>(&journal.actor_type)
    .bind::<Text, _>(&journal.action)
    .bind::<Text, _>(&journal.resource_type)
    .bind::<Nullable<Text>, _>(&journal.resource_id)
    .bind::<Nullable<Jsonb>, _>(&journal.before)
    .bind::<Nullable<Jsonb>, _>(&journal.after)
    .bind::<Jsonb, _>(&meta)
    .bind::<SqlUuid, _>(new_id())
    .bind::<Nullable<Text>, _>(event.map(|e| e.event_type.as_str()))
    .bind::<Nullable<SqlUuid>, _>(event.and_then(|e| e.tenant_id))
    .bind::<Nullable<Jsonb>, _>(event.map(|e| &e.payload))
    .bind::<Array<SqlUuid>, _>(event.map(|e| e.extra_audience.as_slice()).unwrap_or_default())
    .get_result(conn)
    .await?;
    Ok(fanned.n as usize)
}

#[derive(QueryableByName)]
struct Fanned {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
