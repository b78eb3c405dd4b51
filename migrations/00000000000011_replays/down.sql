DELETE FROM webhook_deliveries WHERE replay_id IS NOT NULL;
DROP INDEX webhook_deliveries_replay_pending_idx;
DROP INDEX webhook_deliveries_replay_key;
DROP INDEX webhook_deliveries_live_key;
ALTER TABLE webhook_deliveries DROP COLUMN replay_id;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_webhook_id_event_id_key UNIQUE (webhook_id, event_id);
DROP INDEX webhook_events_keyset_idx;
DROP TABLE webhook_replays;
