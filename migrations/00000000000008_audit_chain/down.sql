DROP TABLE audit_checkpoint;
DROP TABLE audit_chain;
DROP INDEX audit_logs_unsealed_idx;
DROP INDEX audit_logs_tenant_seq_idx;
DROP INDEX audit_logs_seq_idx;
ALTER TABLE audit_logs DROP COLUMN xid, DROP COLUMN hash, DROP COLUMN seq;
