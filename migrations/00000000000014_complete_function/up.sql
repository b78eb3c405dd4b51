-- The worker's completion as a function: the compare-and-set on the lease and the attempts
-- it records in one statement and one round trip, with the plan kept per connection
-- (a completion batch runs several times a second under load).
CREATE FUNCTION stratum_complete_deliveries(
    p_ids uuid[],
    p_leases uuid[],
    p_statuses text[],
    p_attempts integer[],
    p_next timestamptz[],
    p_errors text[],
    p_codes integer[],
    p_completed timestamptz[],
    p_counted boolean[],
    p_durations integer[],
    p_bodies text[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH u AS (
        SELECT *
          FROM unnest(p_ids, p_leases, p_statuses, p_attempts, p_next, p_errors, p_codes,
                      p_completed, p_counted, p_durations, p_bodies)
               AS u(id, lease_id, status, attempts, next_retry_at, last_error, response_code,
                    completed_at, counted, duration_ms, body)
    ), applied AS (
        -- Compare-and-set on the lease: a worker whose lease ran out writes nothing.
        UPDATE webhook_deliveries d
           SET status = u.status,
               attempts = u.attempts,
               next_retry_at = u.next_retry_at,
               last_error = CASE WHEN u.counted THEN u.last_error ELSE coalesce(u.last_error, d.last_error) END,
               response_code = CASE WHEN u.counted THEN u.response_code ELSE d.response_code END,
               completed_at = u.completed_at,
               lease_id = NULL,
               lease_expires_at = NULL
          FROM u
         WHERE d.id = u.id AND d.lease_id = u.lease_id
        RETURNING d.id
    ), recorded AS (
        -- A release (not attempted) records no attempt.
        INSERT INTO webhook_delivery_attempts (id, delivery_id, attempt, status_code, duration_ms, error, response_body)
        SELECT stratum_uuid_v7(), u.id, u.attempts, u.response_code, u.duration_ms, u.last_error, u.body
          FROM u JOIN applied a ON a.id = u.id
         WHERE u.counted
    )
    SELECT a.id FROM applied a;
END
$$;
