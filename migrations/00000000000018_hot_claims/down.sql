-- The claims as migrations 5 and 17 defined them: the lease written into next_retry_at.
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
        -- Locked in the same round-robin order, each by its key alone, until p_limit are
        -- held; rows another claimer holds are skipped, rows it has leased or finished
        -- meanwhile (checked on the locked row) are no longer due. The conditions stay
        -- outside the locking lookup (OFFSET 0 stops the planner pushing them in): inside
        -- it, a plan cached while the tables were small could reach each candidate through
        -- the pending index instead of its key, that is, scan every webhook's due rows once
        -- per candidate (a stalled webhook's backlog made such claims 2-14 ms where they
        -- take under 1).
        SELECT x.pid, x.peid
          FROM (SELECT c.cid, c.ceid, c.rn, c.cdue FROM candidates c ORDER BY c.rn, c.cdue) c
         CROSS JOIN LATERAL (
               SELECT d.id AS pid, d.event_id AS peid, d.status AS pstatus, d.next_retry_at AS pdue
                 FROM webhook_deliveries d
                WHERE d.id = c.cid AND d.event_id = c.ceid
                  FOR UPDATE SKIP LOCKED
               OFFSET 0 -- keeps the conditions below out of the lookup
             ) x
         WHERE x.pstatus = 'pending' AND x.pdue <= now()
         LIMIT p_limit
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


ALTER FUNCTION stratum_claim_per_webhook(bigint, bigint, uuid[], bigint[], uuid, interval)
    SET enable_seqscan = off;

CREATE OR REPLACE FUNCTION stratum_claim_deliveries(
    p_limit bigint,
    p_skip uuid[],
    p_per_webhook bigint,
    p_lease_id uuid,
    p_scan bigint,
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
    WITH candidates AS (
        -- Webhooks at their limit and inactive ones are left out before the LIMIT: else a
        -- slow receiver's backlog would fill the window and starve every other webhook.
        SELECT d.id AS cid, d.webhook_id AS cwebhook, d.next_retry_at AS cdue
          FROM webhook_deliveries d
          JOIN webhooks w ON w.id = d.webhook_id AND w.active
         WHERE d.status = 'pending' AND d.next_retry_at <= now()
           AND NOT (d.webhook_id = ANY(p_skip))
         ORDER BY d.next_retry_at
         LIMIT p_scan
    ), ranked AS (
        SELECT c.cid, c.cdue, row_number() OVER (PARTITION BY c.cwebhook ORDER BY c.cdue) AS rn
          FROM candidates c
    ), chosen AS (
        SELECT r.cid FROM ranked r WHERE r.rn <= p_per_webhook ORDER BY r.cdue LIMIT p_limit * 2
    ), picked AS (
        SELECT d.id AS pid
          FROM webhook_deliveries d
         WHERE d.id = ANY(ARRAY(SELECT ch.cid FROM chosen ch))
           AND d.status = 'pending' AND d.next_retry_at <= now()
         ORDER BY d.next_retry_at
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

-- Partitions at fillfactor 80 again, as migration 16 created them.
CREATE OR REPLACE FUNCTION stratum_create_partitions(p_from timestamptz, p_until timestamptz)
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

DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'webhook_deliveries'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = %s)', p, 80);
    END LOOP;
END
$$;
