-- Idempotency keys: per API key, written in the transaction of the change they answer for,
-- with the response the first request got. purge-expired removes those older than 24 h.
CREATE TABLE idempotency_keys (
    principal     text NOT NULL,
    key           text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- hex SHA-256 of method, path and body.
    fingerprint   text NOT NULL,
    status        integer NOT NULL,
    response_body text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
