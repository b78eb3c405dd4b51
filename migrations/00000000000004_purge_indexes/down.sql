DROP INDEX IF EXISTS consent_records_ended_idx;
