-- Delivery controls: signing secrets kept through a grace period, a circuit breaker shared by
-- every process, per-webhook rate limits and FIFO lanes.
--
-- webhooks gains the settings and the previous secrets (newest first, each with the time it
-- stops signing; encrypted like secret_encrypted). webhook_controls holds what every worker
-- must agree on: the breaker and the rate limiter's next free slot (a GCRA "theoretical
-- arrival time"). Deliveries of a FIFO webhook carry a lane position (lane_seq) taken from a
-- sequence inside the writing transaction, so for one tenant (whose writes hold its row
-- lock) the lane follows commit order.
ALTER TABLE webhooks
    ADD COLUMN rate_limit_per_second integer CHECK (rate_limit_per_second BETWEEN 1 AND 10000),
    ADD COLUMN ordering text NOT NULL DEFAULT 'unordered' CHECK (ordering IN ('unordered', 'fifo')),
    ADD COLUMN disabled_reason text CHECK (disabled_reason IN ('gone', 'failing')),
    ADD COLUMN previous_secrets text[] NOT NULL DEFAULT '{}',
    ADD COLUMN previous_secrets_expire_at timestamptz[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT webhooks_previous_secrets_paired
        CHECK (cardinality(previous_secrets) = cardinality(previous_secrets_expire_at)
               AND cardinality(previous_secrets) <= 10);

CREATE TABLE webhook_controls (
    webhook_id           uuid PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    state                text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- When the breaker last went from closed to open (kept through failed probes).
    opened_at            timestamptz,
    -- Open: no attempt before it. Half-open: the probe's lease; a lost probe is retried after it.
    next_probe_at        timestamptz,
    -- The cool-down that follows the next failed probe.
    cooldown_ms          bigint NOT NULL DEFAULT 0,
    -- The rate limiter's next free slot.
    rate_next_at         timestamptz
);
-- The claim looks up only webhooks that need it.
CREATE INDEX webhook_controls_open_idx ON webhook_controls (webhook_id) WHERE state <> 'closed';

INSERT INTO webhook_controls (webhook_id) SELECT id FROM webhooks;

CREATE FUNCTION stratum_webhook_controls_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_controls (webhook_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NEW;
END
$$;
CREATE TRIGGER webhooks_controls_row AFTER INSERT ON webhooks
    FOR EACH ROW EXECUTE FUNCTION stratum_webhook_controls_row();

CREATE SEQUENCE webhook_lane_seq;
ALTER TABLE webhook_deliveries ADD COLUMN lane_seq bigint;
CREATE INDEX webhook_deliveries_lane_idx ON webhook_deliveries (webhook_id, lane_seq)
    WHERE status = 'pending' AND lane_seq IS NOT NULL;

-- The journal's fan-out gives each delivery to a FIFO webhook its lane position.
CREATE OR REPLACE FUNCTION stratum_record(
    p_audit_id uuid,
    p_tenant_id uuid,
    p_actor_id text,
    p_actor_type text,
    p_action text,
    p_resource_type text,
    p_resource_id text,
    p_before jsonb,
    p_after jsonb,
    p_metadata jsonb,
    p_event_id uuid,
    p_event_type text,
    p_event_tenant_id uuid,
    p_payload jsonb,
    p_extra_audience uuid[],
    p_notify boolean
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    fanned bigint := 0;
    audience uuid[];
BEGIN
    INSERT INTO audit_logs (id, tenant_id, actor_id, actor_type, action, resource_type, resource_id,
                            before_state, after_state, metadata)
    VALUES (p_audit_id, p_tenant_id, p_actor_id, p_actor_type, p_action, p_resource_type, p_resource_id,
            p_before, p_after, p_metadata);
    IF p_event_type IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO webhook_events (id, event_type, tenant_id, payload)
    VALUES (p_event_id, p_event_type, p_event_tenant_id, p_payload);
    -- The event's tenant and its ancestors (its path), plus any extra audience.
    SELECT coalesce(p_extra_audience, '{}'::uuid[])
           || coalesce((SELECT string_to_array(trim(BOTH '/' FROM t.ancestry_path), '/')::uuid[]
                          FROM tenants t WHERE t.id = p_event_tenant_id), '{}'::uuid[])
      INTO audience;
    INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id, lane_seq)
    SELECT stratum_uuid_v7(), w.id, p_event_id, p_event_type, p_event_tenant_id,
           CASE WHEN w.ordering = 'fifo' THEN nextval('webhook_lane_seq') END
      FROM webhooks w
     WHERE w.active
       AND w.events @> ARRAY[p_event_type]
       AND (w.tenant_id IS NULL OR w.tenant_id = ANY(audience));
    GET DIAGNOSTICS fanned = ROW_COUNT;
    IF fanned > 0 AND p_notify THEN
        -- Delivered by PostgreSQL only if and when the transaction commits.
        PERFORM pg_notify('stratum_deliveries', '');
    END IF;
    RETURN fanned;
END
$$;

-- The claim with delivery controls. Webhooks whose breaker is not closed, that are rate
-- limited or FIFO ("controlled") get their room from webhook_controls, whose rows are locked
-- for the claim (a row another claimer holds gives its webhook no room this time):
--   - breaker open (or a probe in flight) until next_probe_at: no room; after it: one
--     delivery, the probe, and the breaker is half-open with the probe's lease;
--   - rate limited to N/s: as many deliveries as have a free slot in the coming second;
--     each is returned with not_before, its slot (slots are 1/N s apart), and the next free
--     slot moves past the last one taken;
--   - FIFO: only the head of the lane (the lowest lane_seq among pending deliveries), when
--     it is due and not leased; a failing head holds the lane through its retries.
-- Every other webhook is claimed exactly as by stratum_claim_per_webhook (migration 18).
CREATE FUNCTION stratum_claim_controlled(
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
    previous_secrets text[],
    previous_secrets_expire_at timestamptz[],
    fifo boolean,
    not_before timestamptz,
    event_id uuid,
    event_type text,
    tenant_id uuid,
    payload jsonb,
    event_created_at timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_controlled uuid[];
    v_ids uuid[] := '{}';
    v_rooms bigint[] := '{}';
    v_rate_ids uuid[] := '{}';
    v_rate_n integer[] := '{}';
    v_rate_from timestamptz[] := '{}';
    v_rate_taken bigint[] := '{}';
    v_fifo uuid[] := '{}';
    v_probe uuid[] := '{}';
    v_probed uuid[] := '{}';
    v_room bigint;
    v_slots bigint;
    v_i integer;
    c record;
    r record;
    h record;
BEGIN
    SELECT coalesce(array_agg(w.id), '{}') INTO v_controlled
      FROM webhooks w
     WHERE w.active
       AND (w.rate_limit_per_second IS NOT NULL OR w.ordering = 'fifo'
            OR w.id IN (SELECT k.webhook_id FROM webhook_controls k WHERE k.state <> 'closed'));
    IF cardinality(v_controlled) = 0 THEN
        RETURN QUERY
        SELECT x.id, x.attempts, x.webhook_id, x.url, x.secret_encrypted, w.previous_secrets,
               w.previous_secrets_expire_at, false, NULL::timestamptz, x.event_id, x.event_type,
               x.tenant_id, x.payload, x.event_created_at
          FROM stratum_claim_per_webhook(p_limit, p_default, p_webhooks, p_rooms, p_lease_id, p_lease) x
          JOIN webhooks w ON w.id = x.webhook_id;
        RETURN;
    END IF;

    -- Uncontrolled webhooks keep the rooms the caller asked for.
    SELECT coalesce(array_agg(u.wid), '{}'), coalesce(array_agg(u.room), '{}') INTO v_ids, v_rooms
      FROM unnest(p_webhooks, p_rooms) AS u(wid, room)
     WHERE NOT (u.wid = ANY(v_controlled));
    -- Controlled ones have no room unless their row is ours below.
    v_ids := v_ids || v_controlled;
    v_rooms := v_rooms || array_fill(0::bigint, ARRAY[cardinality(v_controlled)]);

    FOR c IN
        SELECT w.id AS wid, w.rate_limit_per_second AS rate, w.ordering = 'fifo' AS is_fifo,
               k.state, k.next_probe_at, k.rate_next_at
          FROM webhooks w
          JOIN webhook_controls k ON k.webhook_id = w.id
         WHERE w.id = ANY(v_controlled)
         ORDER BY w.id
           FOR UPDATE OF k SKIP LOCKED
    LOOP
        v_room := coalesce(p_rooms[array_position(p_webhooks, c.wid)], p_default);
        IF c.state <> 'closed' THEN
            IF c.next_probe_at IS NOT NULL AND c.next_probe_at > v_now THEN
                v_room := 0;
            ELSE
                v_room := least(v_room, 1);
                v_probe := v_probe || c.wid;
            END IF;
        END IF;
        IF c.rate IS NOT NULL AND v_room > 0 THEN
            v_slots := floor(extract(epoch FROM (v_now + interval '1 second'
                             - greatest(coalesce(c.rate_next_at, v_now), v_now))) * c.rate)::bigint;
            v_room := least(v_room, greatest(v_slots, 0));
            v_rate_ids := v_rate_ids || c.wid;
            v_rate_n := v_rate_n || c.rate;
            v_rate_from := v_rate_from || greatest(coalesce(c.rate_next_at, v_now), v_now);
            v_rate_taken := v_rate_taken || 0::bigint;
        END IF;
        IF c.is_fifo THEN
            IF v_room > 0 THEN
                v_fifo := v_fifo || c.wid;
            END IF;
            v_room := 0;
        END IF;
        v_rooms[array_position(v_ids, c.wid)] := least(v_room, p_limit);
    END LOOP;

    FOR r IN
        SELECT x.id, x.attempts, x.webhook_id, x.url, x.secret_encrypted, w.previous_secrets,
               w.previous_secrets_expire_at, x.event_id, x.event_type, x.tenant_id, x.payload,
               x.event_created_at
          FROM stratum_claim_per_webhook(p_limit, p_default, v_ids, v_rooms, p_lease_id, p_lease) x
          JOIN webhooks w ON w.id = x.webhook_id
    LOOP
        id := r.id; attempts := r.attempts; webhook_id := r.webhook_id; url := r.url;
        secret_encrypted := r.secret_encrypted; previous_secrets := r.previous_secrets;
        previous_secrets_expire_at := r.previous_secrets_expire_at; fifo := false;
        event_id := r.event_id; event_type := r.event_type; tenant_id := r.tenant_id;
        payload := r.payload; event_created_at := r.event_created_at; not_before := NULL;
        v_i := array_position(v_rate_ids, r.webhook_id);
        IF v_i IS NOT NULL THEN
            not_before := v_rate_from[v_i] + make_interval(secs => v_rate_taken[v_i]::double precision / v_rate_n[v_i]);
            v_rate_taken[v_i] := v_rate_taken[v_i] + 1;
        END IF;
        IF r.webhook_id = ANY(v_probe) THEN
            v_probed := v_probed || r.webhook_id;
        END IF;
        RETURN NEXT;
    END LOOP;

    -- The head of each free FIFO lane.
    FOREACH c.wid IN ARRAY v_fifo LOOP
        SELECT d.id AS did, d.event_id AS deid, d.next_retry_at AS due, d.lease_expires_at AS lease
          INTO h
          FROM webhook_deliveries d
         WHERE d.webhook_id = c.wid AND d.status = 'pending' AND d.lane_seq IS NOT NULL
         ORDER BY d.lane_seq
         LIMIT 1;
        CONTINUE WHEN NOT FOUND OR h.due > v_now OR (h.lease IS NOT NULL AND h.lease > v_now);
        FOR r IN
            UPDATE webhook_deliveries d
               SET lease_id = p_lease_id, lease_expires_at = v_now + p_lease
              FROM webhooks w, webhook_events e
             WHERE d.id = h.did AND d.event_id = h.deid
               AND d.id IN (SELECT l.id FROM webhook_deliveries l
                             WHERE l.id = h.did AND l.event_id = h.deid AND l.status = 'pending'
                               AND (l.lease_expires_at IS NULL OR l.lease_expires_at <= v_now)
                               FOR UPDATE SKIP LOCKED)
               AND w.id = d.webhook_id AND e.id = d.event_id
            RETURNING d.id, d.attempts, d.webhook_id, w.url, w.secret_encrypted, w.previous_secrets,
                      w.previous_secrets_expire_at, d.event_id, d.event_type, d.tenant_id,
                      e.payload, e.created_at AS event_created_at
        LOOP
            id := r.id; attempts := r.attempts; webhook_id := r.webhook_id; url := r.url;
            secret_encrypted := r.secret_encrypted; previous_secrets := r.previous_secrets;
            previous_secrets_expire_at := r.previous_secrets_expire_at; fifo := true;
            event_id := r.event_id; event_type := r.event_type; tenant_id := r.tenant_id;
            payload := r.payload; event_created_at := r.event_created_at; not_before := NULL;
            v_i := array_position(v_rate_ids, r.webhook_id);
            IF v_i IS NOT NULL THEN
                not_before := v_rate_from[v_i];
                v_rate_taken[v_i] := 1;
            END IF;
            IF r.webhook_id = ANY(v_probe) THEN
                v_probed := v_probed || r.webhook_id;
            END IF;
            RETURN NEXT;
        END LOOP;
    END LOOP;

    -- The slots taken, and the probes sent (their lease bounds the half-open state).
    FOR v_i IN 1 .. coalesce(cardinality(v_rate_ids), 0) LOOP
        IF v_rate_taken[v_i] > 0 THEN
            UPDATE webhook_controls k
               SET rate_next_at = v_rate_from[v_i]
                                  + make_interval(secs => v_rate_taken[v_i]::double precision / v_rate_n[v_i])
             WHERE k.webhook_id = v_rate_ids[v_i];
        END IF;
    END LOOP;
    IF cardinality(v_probed) > 0 THEN
        UPDATE webhook_controls k
           SET state = 'half_open', next_probe_at = v_now + p_lease
         WHERE k.webhook_id = ANY(v_probed);
    END IF;
END
$$;

-- Like the claim it wraps: index lookups, never a scan of a queue table.
ALTER FUNCTION stratum_claim_controlled(bigint, bigint, uuid[], bigint[], uuid, interval)
    SET enable_seqscan = off;
