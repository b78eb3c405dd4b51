DROP FUNCTION IF EXISTS stratum_record(uuid, uuid, text, text, text, text, text, jsonb, jsonb, jsonb, uuid, text, uuid, jsonb, uuid[]);
