-- Back to the unpartitioned tables of migrations 1, 11, 13 and 14, rows kept.
DROP FUNCTION stratum_complete_deliveries(uuid[], uuid[], text[], integer[], timestamptz[], text[], integer[], timestamptz[], boolean[], integer[], text[]);
DROP FUNCTION stratum_complete_deliveries(uuid[], uuid[], uuid[], text[], integer[], timestamptz[], text[], integer[], timestamptz[], boolean[], integer[], text[]);

ALTER TABLE webhook_delivery_attempts RENAME TO webhook_delivery_attempts_partitioned;
ALTER TABLE webhook_delivery_attempts_partitioned
    RENAME CONSTRAINT webhook_delivery_attempts_pkey TO webhook_delivery_attempts_partitioned_pkey;
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_partitioned;
ALTER TABLE webhook_deliveries_partitioned
    RENAME CONSTRAINT webhook_deliveries_pkey TO webhook_deliveries_partitioned_pkey;
ALTER TABLE webhook_events RENAME TO webhook_events_partitioned;
ALTER TABLE webhook_events_partitioned
    RENAME CONSTRAINT webhook_events_pkey TO webhook_events_partitioned_pkey;
ALTER INDEX webhook_events_created_idx RENAME TO webhook_events_partitioned_created_idx;
ALTER INDEX webhook_events_keyset_idx RENAME TO webhook_events_partitioned_keyset_idx;
ALTER INDEX webhook_deliveries_webhook_idx RENAME TO webhook_deliveries_partitioned_webhook_idx;
ALTER INDEX webhook_deliveries_failed_idx RENAME TO webhook_deliveries_partitioned_failed_idx;
ALTER INDEX webhook_deliveries_event_idx RENAME TO webhook_deliveries_partitioned_event_idx;
ALTER INDEX webhook_deliveries_finished_idx RENAME TO webhook_deliveries_partitioned_finished_idx;
ALTER INDEX webhook_deliveries_live_key RENAME TO webhook_deliveries_partitioned_live_key;
ALTER INDEX webhook_deliveries_replay_key RENAME TO webhook_deliveries_partitioned_replay_key;
ALTER INDEX webhook_deliveries_replay_pending_idx RENAME TO webhook_deliveries_partitioned_replay_pending_idx;
ALTER INDEX webhook_deliveries_webhook_due_idx RENAME TO webhook_deliveries_partitioned_webhook_due_idx;
ALTER INDEX webhook_delivery_attempts_delivery_idx RENAME TO webhook_delivery_attempts_partitioned_delivery_idx;

CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,
    event_type text NOT NULL,
    tenant_id  uuid,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES webhook_events (id),
    event_type       text NOT NULL,
    tenant_id        uuid,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'success', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_retry_at    timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    response_code    integer,
    lease_id         uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    replay_id        uuid REFERENCES webhook_replays (id) ON DELETE CASCADE
) WITH (fillfactor = 80);
CREATE TABLE webhook_delivery_attempts (
    id            uuid PRIMARY KEY,
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    status_code   integer,
    duration_ms   integer NOT NULL,
    error         text,
    response_body text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO webhook_events SELECT id, event_type, tenant_id, payload, created_at FROM webhook_events_partitioned;
INSERT INTO webhook_deliveries
SELECT id, webhook_id, event_id, event_type, tenant_id, status, attempts, next_retry_at, last_error,
       response_code, lease_id, lease_expires_at, created_at, completed_at, replay_id
  FROM webhook_deliveries_partitioned;
INSERT INTO webhook_delivery_attempts
SELECT id, delivery_id, attempt, status_code, duration_ms, error, response_body, created_at
  FROM webhook_delivery_attempts_partitioned;
DROP TABLE webhook_delivery_attempts_partitioned;
DROP TABLE webhook_deliveries_partitioned;
DROP TABLE webhook_events_partitioned;
DROP SCHEMA stratum_partitions;

CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);
CREATE INDEX webhook_events_keyset_idx ON webhook_events (created_at, id);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (created_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (completed_at) WHERE status <> 'pending';
CREATE UNIQUE INDEX webhook_deliveries_live_key ON webhook_deliveries (webhook_id, event_id) WHERE replay_id IS NULL;
CREATE UNIQUE INDEX webhook_deliveries_replay_key ON webhook_deliveries (replay_id, event_id) WHERE replay_id IS NOT NULL;
CREATE INDEX webhook_deliveries_replay_pending_idx ON webhook_deliveries (replay_id) WHERE status = 'pending' AND replay_id IS NOT NULL;
CREATE INDEX webhook_deliveries_webhook_due_idx ON webhook_deliveries (webhook_id, next_retry_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_attempts_delivery_idx ON webhook_delivery_attempts (delivery_id, attempt);

DROP FUNCTION stratum_create_partitions(timestamptz, timestamptz);
DROP FUNCTION stratum_link_partitions(text);
DROP FUNCTION stratum_uuid_v7_at(timestamptz);
DROP FUNCTION stratum_uuid_v7_floor(timestamptz);

-- The claim and completion of migrations 13 and 14.
CREATE OR REPLACE FUNCTION stratum_claim_per_webhook(
    p_limit bigint,
    p_default bigint,
    p_webhooks uuid[],
    p_rooms bigint[],
    p_lease_id uuid,
    p_lease interval
) RETURNS TABLE (
    id uuid,
    attempts integer,
    webhook_id uuid,
    url text,
    secret_encrypted text,
    event_id uuid,
    event_type text,
    tenant_id uuid,
    payload jsonb,
    event_created_at timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH rooms AS (
        SELECT w.id AS wid, least(coalesce(r.room, p_default), p_limit) AS room
          FROM webhooks w
          LEFT JOIN unnest(p_webhooks, p_rooms) AS r(wid, room) ON r.wid = w.id
         WHERE w.active
    ), candidates AS (
        SELECT c.cid, c.cdue, c.rn
          FROM rooms
         CROSS JOIN LATERAL (
               SELECT d.id AS cid, d.next_retry_at AS cdue,
                      row_number() OVER (ORDER BY d.next_retry_at ROWS UNBOUNDED PRECEDING) AS rn
                 FROM webhook_deliveries d
                WHERE d.webhook_id = rooms.wid AND d.status = 'pending' AND d.next_retry_at <= now()
                ORDER BY d.next_retry_at
                LIMIT rooms.room
             ) c
         WHERE rooms.room > 0
         ORDER BY c.rn, c.cdue
         LIMIT p_limit * 2
    ), picked AS (
        -- Locked in the same round-robin order; rows another claimer holds are skipped,
        -- rows it has leased meanwhile are no longer due.
        SELECT d.id AS pid
          FROM candidates c
          JOIN webhook_deliveries d ON d.id = c.cid
         WHERE d.status = 'pending' AND d.next_retry_at <= now()
         ORDER BY c.rn, c.cdue
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
    )
    -- The lease is written into next_retry_at too: a crashed worker's rows become due
    -- again when the lease runs out, with no separate sweep.
    UPDATE webhook_deliveries d
       SET lease_id = p_lease_id, lease_expires_at = now() + p_lease, next_retry_at = now() + p_lease
      FROM webhooks w, webhook_events e
     WHERE d.id = ANY(ARRAY(SELECT p.pid FROM picked p))
       AND w.id = d.webhook_id AND e.id = d.event_id
    RETURNING d.id, d.attempts, d.webhook_id, w.url, w.secret_encrypted, d.event_id, d.event_type,
              d.tenant_id, e.payload, e.created_at;
END
$$;

CREATE FUNCTION stratum_complete_deliveries(
    p_ids uuid[],
    p_leases uuid[],
    p_statuses text[],
    p_attempts integer[],
    p_next timestamptz[],
    p_errors text[],
    p_codes integer[],
    p_completed timestamptz[],
    p_counted boolean[],
    p_durations integer[],
    p_bodies text[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH u AS (
        SELECT *
          FROM unnest(p_ids, p_leases, p_statuses, p_attempts, p_next, p_errors, p_codes,
                      p_completed, p_counted, p_durations, p_bodies)
               AS u(id, lease_id, status, attempts, next_retry_at, last_error, response_code,
                    completed_at, counted, duration_ms, body)
    ), applied AS (
        -- Compare-and-set on the lease: a worker whose lease ran out writes nothing.
        UPDATE webhook_deliveries d
           SET status = u.status,
               attempts = u.attempts,
               next_retry_at = u.next_retry_at,
               last_error = CASE WHEN u.counted THEN u.last_error ELSE coalesce(u.last_error, d.last_error) END,
               response_code = CASE WHEN u.counted THEN u.response_code ELSE d.response_code END,
               completed_at = u.completed_at,
               lease_id = NULL,
               lease_expires_at = NULL
          FROM u
         WHERE d.id = u.id AND d.lease_id = u.lease_id
        RETURNING d.id
    ), recorded AS (
        -- A release (not attempted) records no attempt.
        INSERT INTO webhook_delivery_attempts (id, delivery_id, attempt, status_code, duration_ms, error, response_body)
        SELECT stratum_uuid_v7(), u.id, u.attempts, u.response_code, u.duration_ms, u.last_error, u.body
          FROM u JOIN applied a ON a.id = u.id
         WHERE u.counted
    )
    SELECT a.id FROM applied a;
END
$$;
