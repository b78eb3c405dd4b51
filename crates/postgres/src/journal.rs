//! The one write path every mutation shares: audit entry + outbox event + fan-out, inside
//! the mutation's own transaction.

use diesel::prelude::*;
use diesel::sql_types::{Array, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_core::{new_id, Journal};

use crate::schema::audit_logs;

/// The channel workers `LISTEN` on; a notification means new deliveries are due.
pub const DELIVERY_CHANNEL: &str = "stratum_deliveries";

/// Appends the audit entry and, when the journal carries an event, inserts it and one
/// pending delivery per active webhook subscribed to it whose tenant is the event's
/// tenant, one of its ancestors (or of `extra_audience`), or global. Must be called on the
/// connection of the mutation's open transaction; returns the number of deliveries.
///
/// With an event, audit entry, event and fan-out go in one statement (one round trip).
pub async fn record(conn: &mut AsyncPgConnection, journal: &Journal) -> QueryResult<usize> {
    let meta = json!({
        "request_id": journal.meta.request_id,
        "ip": journal.meta.ip,
        "user_agent": journal.meta.user_agent,
    });
    let Some(event) = &journal.event else {
        diesel::insert_into(audit_logs::table)
            .values((
                audit_logs::id.eq(new_id()),
                audit_logs::tenant_id.eq(journal.tenant_id),
                audit_logs::actor_id.eq(&journal.actor_id),
                audit_logs::actor_type.eq(&journal.actor_type),
                audit_logs::action.eq(&journal.action),
                audit_logs::resource_type.eq(&journal.resource_type),
                audit_logs::resource_id.eq(&journal.resource_id),
                audit_logs::before_state.eq(&journal.before),
                audit_logs::after_state.eq(&journal.after),
                audit_logs::metadata.eq(meta),
            ))
            .execute(conn)
            .await?;
        return Ok(0);
    };
    let fanned: Fanned = diesel::sql_query(
        "WITH audit AS (
             INSERT INTO audit_logs (id, tenant_id, actor_id, actor_type, action, resource_type, resource_id,
                                     before_state, after_state, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ), event AS (
             INSERT INTO webhook_events (id, event_type, tenant_id, payload)
             VALUES ($11, $12, $13, $14)
             RETURNING id
         ), audience AS (
             SELECT unnest($15::uuid[]) AS id
             UNION
             SELECT unnest(string_to_array(trim(BOTH '/' FROM t.ancestry_path), '/')::uuid[])
               FROM tenants t WHERE t.id = $13
         ), fanned AS (
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id)
             SELECT stratum_uuid_v7(), w.id, e.id, $12, $13
               FROM event e, webhooks w
              WHERE w.active
                AND w.events @> ARRAY[$12]::text[]
                AND (w.tenant_id IS NULL OR w.tenant_id IN (SELECT id FROM audience))
             RETURNING 1
         )
         SELECT count(*) AS n FROM fanned",
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
    .bind::<Text, _>(&event.event_type)
    .bind::<Nullable<SqlUuid>, _>(event.tenant_id)
    .bind::<Jsonb, _>(&event.payload)
    .bind::<Array<SqlUuid>, _>(&event.extra_audience)
    .get_result(conn)
    .await?;

    if fanned.n > 0 {
        // Delivered by PostgreSQL only if and when the transaction commits.
        diesel::sql_query(format!("SELECT pg_notify('{DELIVERY_CHANNEL}', '')"))
            .execute(conn)
            .await?;
    }
    Ok(fanned.n as usize)
}

#[derive(QueryableByName)]
struct Fanned {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
