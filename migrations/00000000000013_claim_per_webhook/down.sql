DROP FUNCTION stratum_claim_per_webhook(bigint, bigint, uuid[], bigint[], uuid, interval);
ALTER TABLE webhook_deliveries RESET (fillfactor);
DROP INDEX webhook_deliveries_webhook_due_idx;
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_retry_at) WHERE status = 'pending';
CREATE FUNCTION stratum_claim_deliveries(
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
