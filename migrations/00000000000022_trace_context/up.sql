-- The trace context (a W3C traceparent) of the request that made an event, so each delivery
-- attempt's span can link to it. NULL when the request was not traced.
ALTER TABLE webhook_events ADD COLUMN trace_context text;

-- stratum_record (migration 20) with the event's trace context as one more argument.
CREATE FUNCTION stratum_record(
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
    p_notify boolean,
    p_trace_context text
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
    INSERT INTO webhook_events (id, event_type, tenant_id, payload, trace_context)
    VALUES (p_event_id, p_event_type, p_event_tenant_id, p_payload, p_trace_context);
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

-- The 16-argument form (a process of the previous release during a rolling upgrade, or an
-- embedding service) records no trace context; the 15-argument form calls it.
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
) RETURNS bigint LANGUAGE sql AS $$
    SELECT stratum_record(p_audit_id, p_tenant_id, p_actor_id, p_actor_type, p_action,
                          p_resource_type, p_resource_id, p_before, p_after, p_metadata,
                          p_event_id, p_event_type, p_event_tenant_id, p_payload,
                          p_extra_audience, p_notify, NULL);
$$;
