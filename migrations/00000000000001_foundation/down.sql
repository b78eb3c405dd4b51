DROP FUNCTION IF EXISTS stratum_uuid_v7();
