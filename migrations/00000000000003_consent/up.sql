CREATE TABLE consent_records (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    subject_id text NOT NULL CHECK (char_length(subject_id) BETWEEN 1 AND 255),
    purpose    text NOT NULL CHECK (purpose ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    granted    boolean NOT NULL,
    granted_at timestamptz NOT NULL,
    revoked_at timestamptz,
    expires_at timestamptz,
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, subject_id, purpose)
);
CREATE INDEX consent_records_purpose_idx ON consent_records (tenant_id, purpose);
