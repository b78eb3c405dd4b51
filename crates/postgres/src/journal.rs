//! The one write path every mutation shares: audit entry + outbox event + fan-out, inside
//! the mutation's own transaction.

use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use stratum_core::{new_id, Journal, TenantPath};
use uuid::Uuid;

use crate::schema::{audit_logs, tenants, webhook_events};

/// The channel workers `LISTEN` on; a notification means new deliveries are due.
pub const DELIVERY_CHANNEL: &str = "stratum_deliveries";

/// Appends the audit entry and, when the journal carries an event, inserts it and one
/// pending delivery per active webhook subscribed to it whose tenant is the event's
/// tenant, one of its ancestors (or of `extra_audience`), or global. Must be called on the
/// connection of the mutation's open transaction; returns the number of deliveries.
pub async fn record(conn: &mut AsyncPgConnection, journal: &Journal) -> QueryResult<usize> {
    let meta = json!({
        "request_id": journal.meta.request_id,
        "ip": journal.meta.ip,
        "user_agent": journal.meta.user_agent,
    });
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

    let Some(event) = &journal.event else {
        return Ok(0);
    };
    let event_id = new_id();
    diesel::insert_into(webhook_events::table)
        .values((
            webhook_events::id.eq(event_id),
            webhook_events::event_type.eq(&event.event_type),
            webhook_events::tenant_id.eq(event.tenant_id),
            webhook_events::payload.eq(&event.payload),
        ))
        .execute(conn)
        .await?;

    let mut audience: Vec<Uuid> = event.extra_audience.clone();
    if let Some(t) = event.tenant_id {
        let path: Option<String> = tenants::table
            .find(t)
            .select(tenants::ancestry_path)
            .first(conn)
            .await
            .optional()?;
        match path.as_deref().and_then(TenantPath::parse) {
            Some(p) => audience.extend(p.ids()),
            None => audience.push(t),
        }
    }
    audience.sort_unstable();
    audience.dedup();

    let fanned_out = diesel::sql_query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id)
         SELECT stratum_uuid_v7(), w.id, $1, $2, $3
           FROM webhooks w
          WHERE w.active
            AND w.events @> ARRAY[$2]::text[]
            AND (w.tenant_id IS NULL OR w.tenant_id = ANY($4))",
    )
    .bind::<SqlUuid, _>(event_id)
    .bind::<Text, _>(&event.event_type)
    .bind::<Nullable<SqlUuid>, _>(event.tenant_id)
    .bind::<Array<SqlUuid>, _>(&audience)
    .execute(conn)
    .await?;

    if fanned_out > 0 {
        // Delivered by PostgreSQL only if and when the transaction commits.
        diesel::sql_query(format!("SELECT pg_notify('{DELIVERY_CHANNEL}', '')"))
            .execute(conn)
            .await?;
    }
    Ok(fanned_out)
}
