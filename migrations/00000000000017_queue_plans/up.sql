-- The worker's claim and completion keep their plans per connection (PL/pgSQL caches a
-- generic plan). Planned while the tables were small (a new database, or before a burst),
-- those plans scanned and hashed whole tables, and the claim matched its candidates against
-- every webhook's due rows: its cost grew with the tables and with any webhook's backlog
-- (measured: 0.6 ms per claim with 4,000 rows, 2.3 ms once a stalled webhook had 4,000
-- more pending, back to 0.5 ms after a VACUUM made PostgreSQL plan again).
--
-- The claim now locks each candidate by its key. And every row these functions touch is
-- reached by a key (a delivery's, webhook's or event's id, a webhook's due index), so
-- within them the planner may not choose a table scan: their plans stay key lookups
-- however small the tables were when they were planned.
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
ALTER FUNCTION stratum_complete_deliveries(uuid[], uuid[], uuid[], text[], integer[], timestamptz[], text[], integer[], timestamptz[], boolean[], integer[], text[])
    SET enable_seqscan = off;
