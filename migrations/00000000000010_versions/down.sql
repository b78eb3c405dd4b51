ALTER TABLE consent_records DROP COLUMN version;
ALTER TABLE webhooks DROP COLUMN version;
ALTER TABLE permission_policies DROP COLUMN version;
ALTER TABLE config_entries DROP COLUMN version;
ALTER TABLE tenants DROP COLUMN version;
