DROP FUNCTION IF EXISTS stratum_claim_deliveries(bigint, uuid[], bigint, uuid, bigint, interval);
