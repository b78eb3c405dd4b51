ALTER FUNCTION stratum_complete_deliveries(uuid[], uuid[], uuid[], text[], integer[], timestamptz[], text[], integer[], timestamptz[], boolean[], integer[], text[]) RESET ALL;
-- The claim as migration 16 defined it (which also drops the setting).
DROP FUNCTION stratum_claim_per_webhook(bigint, bigint, uuid[], bigint[], uuid, interval);
CREATE FUNCTION stratum_claim_per_webhook(
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
