-- Time-partitioned outbox and delivery history, so purge-expired drops whole partitions
-- instead of deleting rows one by one (1 M expired deliveries: one DROP per week instead of
-- a million deletes with their cascades).
--
-- Partition key: the EVENT id, a UUIDv7, whose first 48 bits are its creation time in ms.
-- webhook_events is partitioned by id, webhook_deliveries and webhook_delivery_attempts by
-- event_id, all three on the same weekly bounds. So an event, every delivery of it (replays
-- of an old event included) and every attempt of those deliveries live in partitions of the
-- same week, and:
--   * the foreign keys between the three run partition to partition (created by
--     stratum_create_partitions), so a week's three partitions drop together with no
--     cross-partition check, and a replayed delivery of an old event sits in that event's
--     week and keeps the week (and the event) until it is finished and expired;
--   * the unique keys of migration 11 ((webhook_id, event_id) live, (replay_id, event_id)
--     replayed) contain the partition key and stay enforced across the whole table;
--   * the hot path prunes to one partition: the claim carries each delivery's event_id from
--     the per-webhook walk to the lock and the update, and the completion receives it
--     (stratum_complete_deliveries with p_event_ids).
-- The primary keys become (id, event_id) (a partitioned table's keys must contain the
-- partition key); lookups by id alone still work, probing each partition's index.
--
-- Width: one week (Monday 00:00 UTC to Monday 00:00 UTC). The per-webhook claim has no
-- time predicate and walks every partition's pending index; with 90 days of retention that
-- is ~14 weekly partitions plus the default one (daily partitions would be ~92). A week is
-- also the granularity of the drop: rows of the week straddling the cutoff are deleted row
-- by row, as before, until the whole week has expired.
--
-- Partitions live in the schema stratum_partitions (out of the application's namespace and
-- out of `diesel print-schema`), named <table>_<YYYYMMDD of the week's Monday>. A DEFAULT
-- partition per table catches any row outside the weeks created (an insert never fails for
-- lack of a partition); the server creates the current week and the next ones at start-up
-- and hourly. Rows in the default partitions are purged row by row.
CREATE SCHEMA stratum_partitions;

-- The smallest UUIDv7 of the millisecond of p_at: the partition bounds.
CREATE FUNCTION stratum_uuid_v7_floor(p_at timestamptz) RETURNS uuid AS $$
  SELECT (lpad(to_hex(floor(extract(epoch FROM p_at) * 1000)::bigint), 12, '0')
          || '00000000000000000000')::uuid;
$$ LANGUAGE sql IMMUTABLE;

-- A UUIDv7 minted as of p_at (stratum_uuid_v7 with a given clock): for rows written with a
-- past time, e.g. data loaded to reproduce an old database.
CREATE FUNCTION stratum_uuid_v7_at(p_at timestamptz) RETURNS uuid AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM p_at) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid;
$$ LANGUAGE sql VOLATILE;

-- The partition-to-partition foreign keys of one week (or of the default partitions).
CREATE FUNCTION stratum_link_partitions(p_suffix text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE stratum_partitions.%I ADD FOREIGN KEY (event_id)
                    REFERENCES stratum_partitions.%I (id)',
                   'webhook_deliveries_' || p_suffix, 'webhook_events_' || p_suffix);
    EXECUTE format('ALTER TABLE stratum_partitions.%I ADD FOREIGN KEY (delivery_id, event_id)
                    REFERENCES stratum_partitions.%I (id, event_id) ON DELETE CASCADE',
                   'webhook_delivery_attempts_' || p_suffix, 'webhook_deliveries_' || p_suffix);
END
$$;

-- Creates the weekly partitions of the weeks from p_from's to the one holding p_until, those
-- missing; returns how many weeks it created. Idempotent, and safe from several processes at
-- once (they serialize on an advisory lock, the later ones find the weeks there). A week the
-- default partitions already hold rows of (the server was down past the weeks it had created)
-- is left to the default partitions.
CREATE FUNCTION stratum_create_partitions(p_from timestamptz, p_until timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    week timestamptz := date_trunc('week', p_from, 'UTC');
    suffix text;
    lo uuid;
    hi uuid;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stratum_create_partitions'));
    WHILE week <= p_until LOOP
        suffix := to_char(week AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(format('stratum_partitions.%I', 'webhook_events_' || suffix)) IS NULL THEN
            lo := stratum_uuid_v7_floor(week);
            hi := stratum_uuid_v7_floor(week + interval '168 hours');
            BEGIN
                EXECUTE format('CREATE TABLE stratum_partitions.%I PARTITION OF webhook_events
                                FOR VALUES FROM (%L) TO (%L)', 'webhook_events_' || suffix, lo, hi);
                -- Claim and completion rewrite a delivery twice in its life (migration 13).
                EXECUTE format('CREATE TABLE stratum_partitions.%I PARTITION OF webhook_deliveries
                                FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 80)',
                               'webhook_deliveries_' || suffix, lo, hi);
                EXECUTE format('CREATE TABLE stratum_partitions.%I PARTITION OF webhook_delivery_attempts
                                FOR VALUES FROM (%L) TO (%L)', 'webhook_delivery_attempts_' || suffix, lo, hi);
                PERFORM stratum_link_partitions(suffix);
                created := created + 1;
            EXCEPTION WHEN check_violation THEN
                RAISE NOTICE 'stratum: week % stays in the default partitions, which hold rows of it', suffix;
            END;
        END IF;
        week := week + interval '168 hours';
    END LOOP;
    RETURN created;
END
$$;

-- The tables of migrations 1, 11 and 13 move aside; their rows are copied below.
ALTER TABLE webhook_delivery_attempts RENAME TO webhook_delivery_attempts_unpartitioned;
ALTER TABLE webhook_delivery_attempts_unpartitioned
    RENAME CONSTRAINT webhook_delivery_attempts_pkey TO webhook_delivery_attempts_unpartitioned_pkey;
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_unpartitioned;
ALTER TABLE webhook_deliveries_unpartitioned
    RENAME CONSTRAINT webhook_deliveries_pkey TO webhook_deliveries_unpartitioned_pkey;
ALTER TABLE webhook_events RENAME TO webhook_events_unpartitioned;
ALTER TABLE webhook_events_unpartitioned
    RENAME CONSTRAINT webhook_events_pkey TO webhook_events_unpartitioned_pkey;

CREATE TABLE webhook_events (
    id         uuid NOT NULL,
    event_type text NOT NULL,
    tenant_id  uuid,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

CREATE TABLE webhook_deliveries (
    id               uuid NOT NULL,
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- References webhook_events (id) partition to partition (stratum_link_partitions).
    event_id         uuid NOT NULL,
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
    replay_id        uuid REFERENCES webhook_replays (id) ON DELETE CASCADE,
    PRIMARY KEY (id, event_id)
) PARTITION BY RANGE (event_id);

CREATE TABLE webhook_delivery_attempts (
    id            uuid NOT NULL,
    -- (delivery_id, event_id) references webhook_deliveries partition to partition, ON DELETE
    -- CASCADE (stratum_link_partitions).
    delivery_id   uuid NOT NULL,
    -- The delivery's event: the partition key, so attempts drop with their deliveries.
    event_id      uuid NOT NULL,
    attempt       integer NOT NULL,
    status_code   integer,
    duration_ms   integer NOT NULL,
    error         text,
    response_body text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, event_id)
) PARTITION BY RANGE (event_id);

CREATE TABLE stratum_partitions.webhook_events_default PARTITION OF webhook_events DEFAULT;
CREATE TABLE stratum_partitions.webhook_deliveries_default PARTITION OF webhook_deliveries DEFAULT
    WITH (fillfactor = 80);
CREATE TABLE stratum_partitions.webhook_delivery_attempts_default PARTITION OF webhook_delivery_attempts DEFAULT;
SELECT stratum_link_partitions('default');

-- The weeks of the rows there are (within a year; older rows go to the default partitions
-- and the next purge) and the coming ones.
SELECT stratum_create_partitions(
    greatest(least(coalesce((SELECT min(created_at) FROM webhook_events_unpartitioned), now()), now()),
             now() - interval '1 year'),
    now() + interval '14 days');

INSERT INTO webhook_events (id, event_type, tenant_id, payload, created_at)
SELECT id, event_type, tenant_id, payload, created_at FROM webhook_events_unpartitioned;
INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id, status, attempts,
                                next_retry_at, last_error, response_code, lease_id, lease_expires_at,
                                created_at, completed_at, replay_id)
SELECT id, webhook_id, event_id, event_type, tenant_id, status, attempts,
       next_retry_at, last_error, response_code, lease_id, lease_expires_at,
       created_at, completed_at, replay_id
  FROM webhook_deliveries_unpartitioned;
INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code, duration_ms,
                                       error, response_body, created_at)
SELECT a.id, a.delivery_id, d.event_id, a.attempt, a.status_code, a.duration_ms,
       a.error, a.response_body, a.created_at
  FROM webhook_delivery_attempts_unpartitioned a
  JOIN webhook_deliveries_unpartitioned d ON d.id = a.delivery_id;

DROP TABLE webhook_delivery_attempts_unpartitioned;
DROP TABLE webhook_deliveries_unpartitioned;
DROP TABLE webhook_events_unpartitioned;

-- The indexes of migrations 1, 11 and 13, on every partition (present and future).
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

-- The claim of migration 13, carrying each candidate's event_id so the lock and the update
-- reach its row in one partition (run-time pruning) instead of probing every partition.
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
        SELECT c.cid, c.ceid, c.cdue, c.rn
          FROM rooms
         CROSS JOIN LATERAL (
               SELECT d.id AS cid, d.event_id AS ceid, d.next_retry_at AS cdue,
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
        SELECT d.id AS pid, d.event_id AS peid
          FROM candidates c
          JOIN webhook_deliveries d ON d.id = c.cid AND d.event_id = c.ceid
         WHERE d.status = 'pending' AND d.next_retry_at <= now()
         ORDER BY c.rn, c.cdue
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
    )
    -- The lease is written into next_retry_at too: a crashed worker's rows become due
    -- again when the lease runs out, with no separate sweep.
    UPDATE webhook_deliveries d
       SET lease_id = p_lease_id, lease_expires_at = now() + p_lease, next_retry_at = now() + p_lease
      FROM picked p, webhooks w, webhook_events e
     WHERE d.id = p.pid AND d.event_id = p.peid
       AND w.id = d.webhook_id AND e.id = d.event_id
    RETURNING d.id, d.attempts, d.webhook_id, w.url, w.secret_encrypted, d.event_id, d.event_type,
              d.tenant_id, e.payload, e.created_at;
END
$$;

-- The completion of migration 14 with each delivery's event_id (p_event_ids), so every row
-- is reached in its own partition. The attempts carry the event_id too.
CREATE FUNCTION stratum_complete_deliveries(
    p_ids uuid[],
    p_event_ids uuid[],
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
          FROM unnest(p_ids, p_event_ids, p_leases, p_statuses, p_attempts, p_next, p_errors, p_codes,
                      p_completed, p_counted, p_durations, p_bodies)
               AS u(id, event_id, lease_id, status, attempts, next_retry_at, last_error, response_code,
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
         WHERE d.id = u.id AND d.event_id = u.event_id AND d.lease_id = u.lease_id
        RETURNING d.id, d.event_id
    ), recorded AS (
        -- A release (not attempted) records no attempt.
        INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code,
                                               duration_ms, error, response_body)
        SELECT stratum_uuid_v7(), u.id, a.event_id, u.attempts, u.response_code, u.duration_ms,
               u.last_error, u.body
          FROM u JOIN applied a ON a.id = u.id
         WHERE u.counted
    )
    SELECT a.id FROM applied a;
END
$$;

-- The completion of migration 14 keeps its signature for workers of the previous release
-- during a rolling upgrade: it finds each row by id alone (every partition's index) and
-- fills the attempts' event_id.
CREATE OR REPLACE FUNCTION stratum_complete_deliveries(
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
    SELECT stratum_complete_deliveries(
        p_ids,
        ARRAY(SELECT d.event_id
                FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
                LEFT JOIN webhook_deliveries d ON d.id = u.id
               ORDER BY u.ord),
        p_leases, p_statuses, p_attempts, p_next, p_errors, p_codes, p_completed, p_counted,
        p_durations, p_bodies);
END
$$;
