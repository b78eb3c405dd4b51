-- The tamper-evident audit chain (README "Tamper-evident audit log").
--
-- Entries are written unsealed (seq and hash NULL) by stratum_record, exactly as before: no
-- counter in the write path. A sealer behind the writers gives each committed entry its
-- seq and hash. `xid` is the writing transaction (it orders the entries of one sealing
-- pass); rows older than this migration keep NULL and are sealed first. Adding the column
-- without a default and setting the default afterwards keeps this migration instant (no
-- table rewrite) on a large log.
ALTER TABLE audit_logs ADD COLUMN seq bigint;
ALTER TABLE audit_logs ADD COLUMN hash text;
ALTER TABLE audit_logs ADD COLUMN xid xid8;
ALTER TABLE audit_logs ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- The chain in order, for verify and export; a second entry can never take a seq.
CREATE UNIQUE INDEX audit_logs_seq_idx ON audit_logs (seq) WHERE seq IS NOT NULL;
-- A tenant's export in chain order.
CREATE INDEX audit_logs_tenant_seq_idx ON audit_logs (tenant_id, seq) WHERE seq IS NOT NULL;
-- What the sealer still has to do, in the order it seals; small, as rows leave it once sealed.
CREATE INDEX audit_logs_unsealed_idx ON audit_logs (xid NULLS FIRST, created_at, id) WHERE seq IS NULL;

-- The head of the chain: the last sealed seq and hash. One row; sealers lock it, so two
-- sealing processes never interleave.
CREATE TABLE audit_chain (
    id        smallint PRIMARY KEY CHECK (id = 1),
    seq       bigint NOT NULL CHECK (seq >= 0),
    hash      text NOT NULL,
    sealed_at timestamptz
);
INSERT INTO audit_chain (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- What purge-expired removed from the start of the chain: the seq and hash of the last
-- purged entry, from which verification continues.
CREATE TABLE audit_checkpoint (
    id        smallint PRIMARY KEY CHECK (id = 1),
    seq       bigint NOT NULL CHECK (seq > 0),
    hash      text NOT NULL,
    purged_at timestamptz NOT NULL DEFAULT now()
);
