//! Retention purge and encryption-key rotation on PostgreSQL.
//!
//! The purge runs in one transaction. Deliveries, their attempts and events drop a whole
//! weekly partition at a time where every row of the week is expired (see
//! [`crate::partitions`]); everything else is deleted in batches, reading the candidates
//! through a cursor: memory stays bounded (one batch of ids at a time) and each row is
//! visited once.

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
use crate::keys;
use crate::partitions::{self, Week};
use crate::schema::{audit_chain, audit_checkpoint, audit_logs};
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
struct PurgeStep<'a> {
    cursor: &'a str,
    candidates: &'a str,
    delete: &'a str,
}

/// Finished deliveries of one partition (`table`); their attempts, in the same week's
/// attempts partition, go by ON DELETE CASCADE.
fn deliveries_step(table: &str) -> (String, String) {
    const PENDING: &str = crate::status::DELIVERY_PENDING;
    (
        format!("SELECT id FROM {table} WHERE status <> '{PENDING}' AND completed_at < $1"),
        format!(
            "DELETE FROM {table} WHERE id = ANY($1) AND status <> '{PENDING}' AND completed_at < $2"
        ),
    )
}

/// Events of one partition (`events`) older than the cutoff that no delivery references:
/// only the deliveries partition of the same week (`deliveries`) can. Runs after the
/// deliveries step, so it sees the events that step freed.
fn events_step(events: &str, deliveries: &str) -> (String, String) {
    (
        format!(
            "SELECT e.id FROM {events} e
              WHERE e.created_at < $1
                AND NOT EXISTS (SELECT 1 FROM {deliveries} d WHERE d.event_id = e.id)"
        ),
        format!(
            "DELETE FROM {events} e
              WHERE e.id = ANY($1) AND e.created_at < $2
                AND NOT EXISTS (SELECT 1 FROM {deliveries} d WHERE d.event_id = e.id)"
        ),
    )
}

/// Deletes the expired rows of `week` one by one (the week straddles the cutoff, holds
/// pending deliveries, or is the default partitions).
async fn purge_week_rows(
    conn: &mut AsyncPgConnection,
    week: &Week,
    cutoff: OffsetDateTime,
    what: Rows,
) -> QueryResult<u64> {
    let (candidates, delete) = match what {
        Rows::Deliveries => deliveries_step(&week.deliveries()),
        Rows::Events => events_step(&week.events(), &week.deliveries()),
    };
    let step = PurgeStep {
        cursor: match what {
            Rows::Deliveries => "stratum_purge_deliveries",
            Rows::Events => "stratum_purge_events",
        },
        candidates: &candidates,
        delete: &delete,
    };
    purge_in_batches(conn, &step, cutoff).await
}

#[derive(Clone, Copy)]
enum Rows {
    Deliveries,
    Events,
}

/// Locks the three partitioned tables for dropping partitions. A lock timeout, retried,
/// instead of waiting: a claim locks deliveries then events and a fan-out events then
/// deliveries, so a purge waiting for the second while holding the first could deadlock
/// with one of them; giving the lock back lets it finish.
async fn lock_partitioned(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    // 50 × 200 ms: ten seconds of busy tables before the purge gives up.
    const TRIES: usize = 50;
    let mut attempt = 0;
    loop {
        attempt += 1;
        diesel::sql_query("SAVEPOINT stratum_purge_lock")
            .execute(conn)
            .await?;
        diesel::sql_query("SET LOCAL lock_timeout = '200ms'")
            .execute(conn)
            .await?;
        let locked = diesel::sql_query(
            "LOCK TABLE webhook_deliveries, webhook_events, webhook_delivery_attempts
                IN ACCESS EXCLUSIVE MODE",
        )
        .execute(conn)
        .await;
        match locked {
            Ok(_) => {
                diesel::sql_query("RELEASE SAVEPOINT stratum_purge_lock")
                    .execute(conn)
                    .await?;
                diesel::sql_query("SET LOCAL lock_timeout = DEFAULT")
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            // The lock timeout (SQLSTATE 55P03) or a deadlock (40P01), which diesel does not
            // name apart from other database errors.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::Unknown,
                info,
            )) if attempt < TRIES => {
                tracing::debug!(
                    error = info.message(),
                    attempt,
                    "purge: partitions busy, retrying the lock"
                );
                // Rolls the lock timeout back with the failed LOCK.
                diesel::sql_query("ROLLBACK TO SAVEPOINT stratum_purge_lock")
                    .execute(conn)
                    .await?;
                diesel::sql_query("RELEASE SAVEPOINT stratum_purge_lock")
                    .execute(conn)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Purges finished deliveries (with their attempts) and unreferenced events older than
/// `cutoff`; returns (deliveries, events) deleted, exactly.
///
/// A week that ended before the cutoff and whose every row is expired (nothing pending,
/// every delivery finished before the cutoff, every event older) goes whole: counted, then
/// its three partitions dropped. Every other week (the one straddling the cutoff, an old
/// one kept by a pending or recently finished delivery, the default partitions) has its
/// expired rows deleted one by one, as before partitioning. Rows are deleted first and the
/// partitions dropped last, so the exclusive lock the drops need (it stops claims and
/// fan-outs) is held only from the drops to the commit; the weeks are checked again under it.
async fn purge_deliveries_and_events(
    conn: &mut AsyncPgConnection,
    cutoff: OffsetDateTime,
) -> QueryResult<(u64, u64)> {
    let weeks = partitions::weeks(conn, cutoff).await?;
    let mut whole = Vec::new();
    let mut partial = Vec::new();
    for week in weeks {
        if week.ended && partitions::all_expired(conn, &week, cutoff).await? {
            whole.push(week);
        } else {
            partial.push(week);
        }
    }
    let (mut deliveries, mut events) = (0, 0);
    // Deliveries first: the events they held become unreferenced.
    for week in &partial {
        deliveries += purge_week_rows(conn, week, cutoff, Rows::Deliveries).await?;
    }
    for week in &partial {
        events += purge_week_rows(conn, week, cutoff, Rows::Events).await?;
    }
    if whole.is_empty() {
        return Ok((deliveries, events));
    }
    lock_partitioned(conn).await?;
    for week in &whole {
        // A replay may have enqueued an old event since the first look.
        if partitions::all_expired(conn, week, cutoff).await? {
            let (d, e) = partitions::drop_week(conn, week).await?;
            deliveries += d;
            events += e;
        } else {
            deliveries += purge_week_rows(conn, week, cutoff, Rows::Deliveries).await?;
            events += purge_week_rows(conn, week, cutoff, Rows::Events).await?;
        }
    }
    Ok((deliveries, events))
}

/// Purges audit entries older than `cutoff` without breaking the hash chain: of the sealed
/// entries only a prefix of the chain may go (up to the entry before the first one still
/// inside the window), and the last of them becomes the checkpoint verification continues
/// from. Unsealed entries belong to no chain yet and go by age alone. Returns the rows
/// deleted and the new checkpoint, if it moved.
async fn purge_audit(
    conn: &mut AsyncPgConnection,
    cutoff: OffsetDateTime,
) -> QueryResult<(u64, Option<(i64, String)>)> {
    // Locked: two purges agree on where the chain now starts.
    let checkpoint: Option<(i64, String)> = audit_checkpoint::table
        .select((audit_checkpoint::seq, audit_checkpoint::hash))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let from = checkpoint.as_ref().map_or(0, |c| c.0);
    let first_kept: Option<Option<i64>> = audit_logs::table
        .filter(audit_logs::seq.gt(from))
        .filter(audit_logs::created_at.ge(cutoff))
        .order(audit_logs::seq.asc())
        .select(audit_logs::seq)
        .first(conn)
        .await
        .optional()?;
    let upto = match first_kept.flatten() {
        Some(kept) => kept - 1,
        None => audit_chain::table
            .select(audit_chain::seq)
            .first::<i64>(conn)
            .await
            .optional()?
            .unwrap_or(0),
    };
    let mut moved = None;
    let mut upto_sealed = from;
    if upto > from {
        let hash: Option<Option<String>> = audit_logs::table
            .filter(audit_logs::seq.eq(upto))
            .select(audit_logs::hash)
            .first(conn)
            .await
            .optional()?;
        // A missing entry there means the log was tampered with: leave the chain alone so
        // verify still reports it.
        if let Some(hash) = hash.flatten() {
            upto_sealed = upto;
            moved = Some((upto, hash));
        }
    }
    let candidates = format!(
        "SELECT id FROM audit_logs WHERE created_at < $1 AND (seq IS NULL OR seq <= {upto_sealed})"
    );
    let delete = format!(
        "DELETE FROM audit_logs
          WHERE id = ANY($1) AND created_at < $2 AND (seq IS NULL OR seq <= {upto_sealed})"
    );
    let step = PurgeStep {
        cursor: "stratum_purge_audit",
        candidates: &candidates,
        delete: &delete,
    };
    let deleted = purge_in_batches(conn, &step, cutoff).await?;
    if let Some((seq, hash)) = &moved {
        diesel::insert_into(audit_checkpoint::table)
            .values((
                audit_checkpoint::id.eq(1i16),
                audit_checkpoint::seq.eq(seq),
                audit_checkpoint::hash.eq(hash),
            ))
            .on_conflict(audit_checkpoint::id)
            .do_update()
            .set((
                audit_checkpoint::seq.eq(seq),
                audit_checkpoint::hash.eq(hash),
                audit_checkpoint::purged_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
    }
    Ok((deleted, moved))
}

// `least` skips NULLs: the earlier of revocation and expiry, NULL while neither happened.
// The `IS NOT NULL` clause is the predicate of consent_records_ended_idx.
const CONSENT: PurgeStep<'static> = PurgeStep {
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
    step: &PurgeStep<'_>,
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
struct PreviousSecrets {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Array<Text>)]
    secrets: Vec<String>,
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

/// The distinct key ids of every stored envelope, sorted.
async fn key_ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    // `v1:<8 hex>:` is 12 characters; the crypto crate decides what a key id is.
    let prefixes: Vec<KeyPrefix> = diesel::sql_query(
        "SELECT DISTINCT left(v, 12) AS prefix
           FROM (SELECT encrypted_value AS v FROM config_entries WHERE sensitive
                 UNION ALL
                 SELECT secret_encrypted FROM webhooks
                 UNION ALL
                 SELECT unnest(previous_secrets) FROM webhooks) s
          WHERE v LIKE 'v1:%'",
    )
    .load(conn)
    .await?;
    let mut ids: Vec<String> = prefixes
        .iter()
        .filter_map(|p| stratum_crypto::envelope_key_id(&p.prefix).map(str::to_owned))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
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
            let (deliveries, events) =
                purge_deliveries_and_events(conn, cutoffs.deliveries_and_events_before).await?;
            let (audit_logs, checkpoint) = purge_audit(conn, cutoffs.audit_before).await?;
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
            // The checkpoint goes into the purge's own entry: the audit log itself says
            // where its chain now starts.
            let mut journal = counts.complete(journal);
            if let Some(serde_json::Value::Object(after)) = journal.after.as_mut() {
                after.insert(
                    "audit_checkpoint".to_owned(),
                    checkpoint.map_or(
                        serde_json::Value::Null,
                        |(seq, hash)| serde_json::json!({"seq": seq, "hash": hash}),
                    ),
                );
            }
            // Last, so the purge never deletes its own entry.
            record(conn, &journal).await?;
            Ok(counts)
        })
    }

    async fn rotate(
        &self,
        old_key_id: String,
        new_key_id: String,
        reencrypt: Reencrypt,
        journal: Journal,
    ) -> Result<RotationCounts, MaintenanceError> {
        in_tx!(self.pool, MaintenanceError, |conn| {
            if !keys::lock_for_rotation(conn).await? {
                return Err(TxError::Domain(MaintenanceError::RotationInProgress));
            }
            // Writers of secrets have finished or wait for the commit (then find the new
            // key active and re-encrypt), so no value under the old key lands afterwards.
            // Before the first start-up recorded one: the one key the data is under, if any.
            let claim = match keys::recorded_key_id(conn).await? {
                Some(id) => id,
                None => match key_ids(conn).await?.as_slice() {
                    [only] => only.clone(),
                    _ => old_key_id.clone(),
                },
            };
            if keys::active_key_id(conn, &claim).await? != old_key_id {
                return Err(TxError::Domain(MaintenanceError::InvalidOldKey));
            }
            // Reads (and deliveries) go on; every other write to these tables waits for
            // the commit, so nothing is missed or overwritten.
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

            // Previous secrets still signing during a grace period: re-encrypted too.
            let previous: Vec<PreviousSecrets> = diesel::sql_query(
                "SELECT id, previous_secrets AS secrets FROM webhooks
                  WHERE cardinality(previous_secrets) > 0 ORDER BY id",
            )
            .load(conn)
            .await?;
            for p in &previous {
                let mut changed = false;
                let mut out = Vec::with_capacity(p.secrets.len());
                for (i, old) in p.secrets.iter().enumerate() {
                    match apply(&reencrypt, old, || {
                        format!("previous secret {} of webhook {}", i + 1, p.id)
                    })? {
                        Some(v) => {
                            changed = true;
                            out.push(v);
                        }
                        None => out.push(old.clone()),
                    }
                }
                if changed {
                    diesel::sql_query("UPDATE webhooks SET previous_secrets = $2 WHERE id = $1")
                        .bind::<SqlUuid, _>(p.id)
                        .bind::<Array<Text>, _>(&out)
                        .execute(conn)
                        .await?;
                }
            }

            let counts = RotationCounts {
                config_entries: values.len() as u64,
                webhooks: secrets.len() as u64,
            };
            keys::set_active_key_id(conn, &new_key_id).await?;
            record(conn, &counts.complete(journal)).await?;
            Ok(counts)
        })
    }

    async fn init_active_key_id(&self, candidate: String) -> Result<String, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        if let Some(id) = keys::recorded_key_id(&mut conn)
            .await
            .map_err(map_query_error)?
        {
            return Ok(id);
        }
        keys::active_key_id(&mut conn, &candidate)
            .await
            .map_err(map_query_error)
    }

    async fn stored_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        key_ids(&mut conn).await.map_err(map_query_error)
    }
}
