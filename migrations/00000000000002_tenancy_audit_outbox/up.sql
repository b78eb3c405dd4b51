CREATE TABLE tenants (
    id            uuid PRIMARY KEY,
    parent_id     uuid REFERENCES tenants (id),
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    slug          text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- '/<root id>/.../<own id>/': a subtree is every path with this prefix.
    ancestry_path text NOT NULL,
    depth         integer NOT NULL CHECK (depth >= 0),
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenants_slug_key ON tenants (slug);
CREATE INDEX tenants_parent_idx ON tenants (parent_id, id);
CREATE INDEX tenants_path_idx ON tenants (ancestry_path text_pattern_ops);

CREATE TABLE config_entries (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    key             text NOT NULL CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    value           jsonb,
    encrypted_value text,
    locked          boolean NOT NULL DEFAULT false,
    sensitive       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key),
    CHECK ((sensitive AND encrypted_value IS NOT NULL AND value IS NULL)
        OR (NOT sensitive AND encrypted_value IS NULL AND value IS NOT NULL))
);
CREATE INDEX config_entries_sensitive_idx ON config_entries (tenant_id, key) WHERE sensitive;

CREATE TABLE permission_policies (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    key        text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 128),
    value      jsonb NOT NULL,
    mode       text NOT NULL CHECK (mode IN ('LOCKED', 'INHERITED', 'DELEGATED')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, key)
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id),
    name         text,
    -- SHA-256 of the key: the key itself is never stored.
    key_hash     text NOT NULL UNIQUE,
    key_prefix   text NOT NULL,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at DESC);

CREATE TABLE audit_logs (
    id            uuid PRIMARY KEY,
    tenant_id     uuid,
    actor_id      text NOT NULL,
    actor_type    text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text,
    before_state  jsonb,
    after_state   jsonb,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Keyset order is (created_at DESC, id DESC); one index per filter the API offers.
CREATE INDEX audit_logs_order_idx ON audit_logs (created_at DESC, id DESC);
CREATE INDEX audit_logs_tenant_idx ON audit_logs (tenant_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_action_idx ON audit_logs (action, created_at DESC, id DESC);
CREATE INDEX audit_logs_resource_type_idx ON audit_logs (resource_type, created_at DESC, id DESC);
CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_id, created_at DESC, id DESC);

CREATE TABLE webhooks (
    id               uuid PRIMARY KEY,
    tenant_id        uuid REFERENCES tenants (id),
    url              text NOT NULL CHECK (char_length(url) <= 2048),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    secret_encrypted text NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    description      text CHECK (char_length(description) <= 255),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id, created_at DESC);
CREATE INDEX webhooks_events_idx ON webhooks USING gin (events) WHERE active;

-- The outbox: one row per event, written in the transaction of the change that caused it.
CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,
    event_type text NOT NULL,
    tenant_id  uuid,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);

-- The delivery queue.
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
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_retry_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (created_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (completed_at) WHERE status <> 'pending';

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
CREATE INDEX webhook_delivery_attempts_delivery_idx ON webhook_delivery_attempts (delivery_id, attempt);
