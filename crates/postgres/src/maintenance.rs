//! Retention purge and encryption-key rotation on PostgreSQL.
//!
//! The purge deletes in keyset-ordered batches inside one transaction: each batch
//! continues after the last key of the one before, so memory stays bounded and no batch
//! rescans the rows the transaction has already deleted (they stay in the indexes, dead,
//! until the commit).

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
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
pub const PURGE_BATCH: i64 = 5000;
/// Values per `UPDATE … FROM unnest(…)` during a rotation.
const ROTATE_BATCH: usize = 1000;

/// One batch query per table. Each selects up to `$4` keys strictly after the keyset
/// (`$2`, `$3`; NULL = from the start) among the rows before the cutoff `$1`, deletes those
/// still expired (re-checked on the locked row), and answers the number deleted and the
/// batch's last key; no row at all when the batch was empty.
const PURGE_DELIVERIES: &str = "
    WITH batch AS (
        SELECT id, completed_at AS k
          FROM webhook_deliveries
         WHERE status <> 'pending' AND completed_at < $1
           AND (completed_at, id) > (coalesce($2, '-infinity'::timestamptz), coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid))
         ORDER BY completed_at, id
         LIMIT $4
    ), gone AS (
        DELETE FROM webhook_deliveries d USING batch b
         WHERE d.id = b.id AND d.status <> 'pending' AND d.completed_at < $1
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS n, last.k, last.id
      FROM (SELECT k, id FROM batch ORDER BY k DESC, id DESC LIMIT 1) last";

const PURGE_EVENTS: &str = "
    WITH batch AS (
        SELECT id, created_at AS k
          FROM webhook_events
         WHERE created_at < $1
           AND (created_at, id) > (coalesce($2, '-infinity'::timestamptz), coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid))
         ORDER BY created_at, id
         LIMIT $4
    ), gone AS (
        DELETE FROM webhook_events e USING batch b
         WHERE e.id = b.id
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS n, last.k, last.id
      FROM (SELECT k, id FROM batch ORDER BY k DESC, id DESC LIMIT 1) last";

const PURGE_AUDIT: &str = "
    WITH batch AS (
        SELECT id, created_at AS k
          FROM audit_logs
         WHERE created_at < $1
           AND (created_at, id) > (coalesce($2, '-infinity'::timestamptz), coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid))
         ORDER BY created_at, id
         LIMIT $4
    ), gone AS (
        DELETE FROM audit_logs a USING batch b WHERE a.id = b.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS n, last.k, last.id
      FROM (SELECT k, id FROM batch ORDER BY k DESC, id DESC LIMIT 1) last";

// `least` skips NULLs: the earlier of revocation and expiry, NULL while neither happened.
// The `IS NOT NULL` clause repeats the predicate of consent_records_ended_idx so the
// planner can use that index.
const PURGE_CONSENT: &str = "
    WITH batch AS (
        SELECT id, least(revoked_at, expires_at) AS k
          FROM consent_records
         WHERE (revoked_at IS NOT NULL OR expires_at IS NOT NULL)
           AND least(revoked_at, expires_at) < $1
           AND (least(revoked_at, expires_at), id) > (coalesce($2, '-infinity'::timestamptz), coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid))
         ORDER BY least(revoked_at, expires_at), id
         LIMIT $4
    ), gone AS (
        DELETE FROM consent_records c USING batch b
         WHERE c.id = b.id AND least(c.revoked_at, c.expires_at) < $1
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS n, last.k, last.id
      FROM (SELECT k, id FROM batch ORDER BY k DESC, id DESC LIMIT 1) last";

#[derive(QueryableByName)]
struct BatchRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Timestamptz)]
    k: OffsetDateTime,
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Runs one table's batch query until a batch comes back empty; returns the rows deleted.
async fn purge_in_batches(
    conn: &mut AsyncPgConnection,
    query: &'static str,
    cutoff: OffsetDateTime,
) -> QueryResult<u64> {
    let mut after: Option<(OffsetDateTime, Uuid)> = None;
    let mut deleted = 0u64;
    loop {
        let row: Option<BatchRow> = diesel::sql_query(query)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<Nullable<Timestamptz>, _>(after.map(|a| a.0))
            .bind::<Nullable<SqlUuid>, _>(after.map(|a| a.1))
            .bind::<BigInt, _>(PURGE_BATCH)
            .get_result(conn)
            .await
            .optional()?;
        let Some(row) = row else {
            return Ok(deleted);
        };
        deleted += u64::try_from(row.n).unwrap_or(0);
        after = Some((row.k, row.id));
    }
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
                purge_in_batches(conn, PURGE_DELIVERIES, cutoffs.deliveries_and_events_before)
                    .await?;
            let events =
                purge_in_batches(conn, PURGE_EVENTS, cutoffs.deliveries_and_events_before).await?;
            let audit_logs = purge_in_batches(conn, PURGE_AUDIT, cutoffs.audit_before).await?;
            let consent_records =
                purge_in_batches(conn, PURGE_CONSENT, cutoffs.consent_before).await?;
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
            // Reads go on; writes of secrets (and other rotations) wait for the commit, so
            // no value is written under the old key behind the rotation's back.
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
