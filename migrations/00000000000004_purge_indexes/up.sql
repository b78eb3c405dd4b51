-- purge-expired deletes consent records revoked or expired before the retention window,
-- oldest first; every other purge query already has its index (finished deliveries by
-- completed_at, events and audit entries by created_at, deliveries by event_id).
-- least() skips NULLs: the earlier of revocation and expiry.
CREATE INDEX consent_records_ended_idx ON consent_records (least(revoked_at, expires_at), id)
    WHERE revoked_at IS NOT NULL OR expires_at IS NOT NULL;
