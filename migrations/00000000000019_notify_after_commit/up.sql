-- The journal's NOTIFY moves out of the writing transaction. A transaction that notifies
-- takes a database-wide lock at commit and holds it until its commit record is flushed, so
-- every writing transaction that fanned out committed one after another (measured with
-- pgbench, 16 clients, the journal alone: 2,700 transactions/s with the NOTIFY, 4,800/s
-- without it). The server now notifies after the commit, from its own short transaction,
-- coalesced: one NOTIFY at a time per process, and one more after it if writes committed
-- meanwhile (stratum_postgres::wake).
--
-- stratum_record gains p_notify. The 15-argument form keeps notifying inside the
-- transaction: a caller that does not notify after its commit (a previous release during a
-- rolling upgrade, or an embedding service) still wakes the workers.
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
    INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, tenant_id)
    SELECT stratum_uuid_v7(), w.id, p_event_id, p_event_type, p_event_tenant_id
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
    p_extra_audience uuid[]
) RETURNS bigint LANGUAGE sql AS $$
    SELECT stratum_record(p_audit_id, p_tenant_id, p_actor_id, p_actor_type, p_action,
                          p_resource_type, p_resource_id, p_before, p_after, p_metadata,
                          p_event_id, p_event_type, p_event_tenant_id, p_payload,
                          p_extra_audience, true);
$$;
