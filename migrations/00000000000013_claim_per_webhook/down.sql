DROP FUNCTION stratum_claim_per_webhook(bigint, bigint, uuid[], bigint[], uuid, interval);
ALTER TABLE webhook_deliveries RESET (fillfactor);
DROP INDEX webhook_deliveries_webhook_due_idx;
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_retry_at) WHERE status = 'pending';
