//! Retention purge and encryption-key rotation on PostgreSQL.
//!
//! The purge deletes in batches inside one transaction, reading the candidates through a
//! cursor: memory stays bounded (one batch of ids at a time) and each row is visited once.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use stratum_core::{Journal, StoreError};
use stratum_maintenance::{
    MaintenanceError, MaintenanceStore, PurgeCounts, PurgeCutoffs, Reencrypt, RotationCounts,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::map_query_error;
use crate::in_tx;
use crate::journal::record;
use crate::tx::{read_conn, TxError};
use crate::Pool;

/// Rows per purge batch: large enough to amortise round trips, small enough to bound memory.
pub const PURGE_BATCH: usize = 5000;
/// Values per `UPDATE … FROM unnest(…)` during a rotation.
const ROTATE_BATCH: usize = 1000;

/// What each purge step deletes: a query naming the candidate ids (read once through a
/// cursor, so every row is visited once however many batches it takes: rows the
/// transaction already deleted stay in the indexes until the commit, and a query that
/// started over for each batch would wade through them again), and a DELETE of one batch
/// of them (`$1`) that re-checks, on the locked row, that it is still expired (`$2`:
/// the cutoff).
struct PurgeStep {
    cursor: &'static str,
    candidates: &'static str,
    delete: &'static str,
}

const DELIVERIES: PurgeStep = PurgeStep {
    cursor: "stratum_purge_deliveries",
    // Finished deliveries; their attempts go by ON DELETE CASCADE.
    candidates: "SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND completed_at < $1",
    delete: "DELETE FROM webhook_deliveries
              WHERE id = ANY($1) AND status <> 'pending' AND completed_at < $2",
};

const EVENTS: PurgeStep = PurgeStep {
    cursor: "stratum_purge_events",
    // Runs after the deliveries step, so it sees the events that step freed.
    candidates: "SELECT e.id FROM webhook_events e
                  WHERE e.created_at < $1
                    AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)",
    delete: "DELETE FROM webhook_events e
              WHERE e.id = ANY($1) AND e.created_at < $2
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)",
};

const AUDIT: PurgeStep = PurgeStep {
    cursor: "stratum_purge_audit",
    candidates: "SELECT id FROM audit_logs WHERE created_at < $1",
    delete: "DELETE FROM audit_logs WHERE id = ANY($1) AND created_at < $2",
};

// `least` skips NULLs: the earlier of revocation and expiry, NULL while neither happened.
// The `IS NOT NULL` clause is the predicate of consent_records_ended_idx.
const CONSENT: PurgeStep = PurgeStep {
    cursor: "stratum_purge_consent",
    candidates: "SELECT id FROM consent_records
                  WHERE (revoked_at IS NOT NULL OR expires_at IS NOT NULL)
                    AND least(revoked_at, expires_at) < $1",
    delete: "DELETE FROM consent_records
              WHERE id = ANY($1) AND least(revoked_at, expires_at) < $2",
};

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Deletes what `step` names, `PURGE_BATCH` rows at a time; returns the rows deleted.
async fn purge_in_batches(
    conn: &mut AsyncPgConnection,
    step: &PurgeStep,
    cutoff: OffsetDateTime,
) -> QueryResult<u64> {
    diesel::sql_query(format!(
        "DECLARE {} NO SCROLL CURSOR FOR {}",
        step.cursor, step.candidates
    ))
    .bind::<Timestamptz, _>(cutoff)
    .execute(conn)
    .await?;
    let fetch = format!("FETCH FORWARD {PURGE_BATCH} FROM {}", step.cursor);
    let mut deleted = 0u64;
    loop {
        let batch: Vec<IdRow> = diesel::sql_query(&fetch).load(conn).await?;
        if batch.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = batch.into_iter().map(|r| r.id).collect();
        deleted += diesel::sql_query(step.delete)
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Timestamptz, _>(cutoff)
            .execute(conn)
            .await? as u64;
    }
    diesel::sql_query(format!("CLOSE {}", step.cursor))
        .execute(conn)
        .await?;
    Ok(deleted)
}

#[derive(QueryableByName)]
struct ConfigSecret {
    #[diesel(sql_type = SqlUuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct WebhookSecret {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct KeyPrefix {
    #[diesel(sql_type = Text)]
    prefix: String,
}

type TxResult<T> = Result<T, TxError<MaintenanceError>>;

fn apply(
    reencrypt: &Reencrypt,
    value: &str,
    row: impl FnOnce() -> String,
) -> TxResult<Option<String>> {
    match reencrypt(value) {
        Ok(out) if out == value => Ok(None),
        Ok(out) => Ok(Some(out)),
        Err(reason) => {
            let row = row();
            tracing::error!(row = %row, reason = %reason, "key rotation aborted: a stored value cannot be re-encrypted; nothing was changed");
            Err(TxError::Domain(MaintenanceError::Reencrypt { row, reason }))
        }
    }
}

/// Purge and rotation on PostgreSQL.
#[derive(Clone)]
pub struct PgMaintenanceStore {
    pool: Pool,
}

impl PgMaintenanceStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl MaintenanceStore for PgMaintenanceStore {
    async fn purge(
        &self,
        cutoffs: PurgeCutoffs,
        journal: Journal,
    ) -> Result<PurgeCounts, StoreError> {
        in_tx!(self.pool, StoreError, |conn| {
            // Deliveries first: the events they held become unreferenced.
            let deliveries =
                purge_in_batches(conn, &DELIVERIES, cutoffs.deliveries_and_events_before).await?;
            let events =
                purge_in_batches(conn, &EVENTS, cutoffs.deliveries_and_events_before).await?;
            let audit_logs = purge_in_batches(conn, &AUDIT, cutoffs.audit_before).await?;
            let consent_records = purge_in_batches(conn, &CONSENT, cutoffs.consent_before).await?;
            // Idempotency keys live 24 h whatever the retention window; they are not counted
            // in the response, whose shape API.md fixes.
            diesel::sql_query(format!(
                "DELETE FROM idempotency_keys WHERE created_at < now() - interval '{} hours'",
                crate::idempotency::KEY_TTL_HOURS
            ))
            .execute(conn)
            .await?;
            let counts = PurgeCounts {
                deliveries,
                events,
                audit_logs,
                consent_records,
            };
            // Last, so the purge never deletes its own entry.
            record(conn, &counts.complete(journal)).await?;
            Ok(counts)
        })
    }

    async fn rotate(
        &self,
        reencrypt: Reencrypt,
        journal: Journal,
    ) -> Result<RotationCounts, MaintenanceError> {
        in_tx!(self.pool, MaintenanceError, |conn| {
            // Reads (and deliveries) go on; writes of secrets and other rotations wait for
            // the commit, so nothing is missed or overwritten. A write encrypted just before
            // the process switched keys lands under the old key, which the process keeps
            // as its previous key (and the next rotation re-encrypts).
            diesel::sql_query("LOCK TABLE config_entries, webhooks IN SHARE ROW EXCLUSIVE MODE")
                .execute(conn)
                .await?;
            let configs: Vec<ConfigSecret> = diesel::sql_query(
                "SELECT tenant_id, key, encrypted_value AS value
                   FROM config_entries
                  WHERE sensitive AND encrypted_value IS NOT NULL
                  ORDER BY tenant_id, key",
            )
            .load(conn)
            .await?;
            let mut tenant_ids = Vec::new();
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for c in &configs {
                if let Some(v) = apply(&reencrypt, &c.value, || {
                    format!("config entry {}/{}", c.tenant_id, c.key)
                })? {
                    tenant_ids.push(c.tenant_id);
                    keys.push(c.key.as_str());
                    values.push(v);
                }
            }
            for ((t, k), v) in tenant_ids
                .chunks(ROTATE_BATCH)
                .zip(keys.chunks(ROTATE_BATCH))
                .zip(values.chunks(ROTATE_BATCH))
            {
                diesel::sql_query(
                    "UPDATE config_entries c
                        SET encrypted_value = u.value
                       FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(tenant_id, key, value)
                      WHERE c.tenant_id = u.tenant_id AND c.key = u.key AND c.sensitive",
                )
                .bind::<Array<SqlUuid>, _>(t)
                .bind::<Array<Text>, _>(k)
                .bind::<Array<Text>, _>(v)
                .execute(conn)
                .await?;
            }

            let hooks: Vec<WebhookSecret> =
                diesel::sql_query("SELECT id, secret_encrypted AS value FROM webhooks ORDER BY id")
                    .load(conn)
                    .await?;
            let mut ids = Vec::new();
            let mut secrets = Vec::new();
            for h in &hooks {
                if let Some(v) = apply(&reencrypt, &h.value, || format!("webhook {}", h.id))? {
                    ids.push(h.id);
                    secrets.push(v);
                }
            }
            for (i, s) in ids.chunks(ROTATE_BATCH).zip(secrets.chunks(ROTATE_BATCH)) {
                diesel::sql_query(
                    "UPDATE webhooks w
                        SET secret_encrypted = u.secret
                       FROM unnest($1::uuid[], $2::text[]) AS u(id, secret)
                      WHERE w.id = u.id",
                )
                .bind::<Array<SqlUuid>, _>(i)
                .bind::<Array<Text>, _>(s)
                .execute(conn)
                .await?;
            }

            let counts = RotationCounts {
                config_entries: values.len() as u64,
                webhooks: secrets.len() as u64,
            };
            record(conn, &counts.complete(journal)).await?;
            Ok(counts)
        })
    }

    async fn stored_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        // `v1:<8 hex>:` is 12 characters; the crypto crate decides what a key id is.
        let prefixes: Vec<KeyPrefix> = diesel::sql_query(
            "SELECT DISTINCT left(v, 12) AS prefix
               FROM (SELECT encrypted_value AS v FROM config_entries WHERE sensitive
                     UNION ALL
                     SELECT secret_encrypted FROM webhooks) s
              WHERE v LIKE 'v1:%'",
        )
        .load(&mut conn)
        .await
        .map_err(map_query_error)?;
        let mut ids: Vec<String> = prefixes
            .iter()
            .filter_map(|p| stratum_crypto::envelope_key_id(&p.prefix).map(str::to_owned))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
