-- Which encryption key the stored secrets are (to be) encrypted under. One row, written at
-- first start (from the stored envelopes, else the process key) and by each key rotation.
-- Writers of ciphertext check it inside their transaction, so no value sealed with a
-- superseded key can commit after a rotation.
CREATE TABLE encryption_keys_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    active_key_id text NOT NULL CHECK (active_key_id ~ '^[0-9a-f]{8}$'),
    rotated_at timestamptz NOT NULL DEFAULT now()
);
