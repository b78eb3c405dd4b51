-- A version per mutable resource: every write checks the version it read and bumps it, so a
-- read-modify-write never overwrites a change it did not see, and clients get an ETag.
ALTER TABLE tenants ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE config_entries ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE permission_policies ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE webhooks ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE consent_records ADD COLUMN version bigint NOT NULL DEFAULT 1;
