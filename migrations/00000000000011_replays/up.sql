-- Replays: durable jobs that re-enqueue the stored events of a window to one webhook.
CREATE TABLE webhook_replays (
    id                uuid PRIMARY KEY,
    webhook_id        uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    since             timestamptz NOT NULL,
    until             timestamptz NOT NULL CHECK (since < until),
    -- The `events` the request named (null: all of the webhook's).
    events            text[],
    -- The event types replayed: the webhook's subscription narrowed by `events`, fixed when
    -- the job was created so that `total` stays true.
    event_types       text[] NOT NULL,
    status            text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed')),
    -- The last event enqueued, in (created_at, id) order: the job resumes after it.
    cursor_created_at timestamptz,
    cursor_id         uuid,
    total             bigint NOT NULL,
    enqueued          bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
CREATE INDEX webhook_replays_running_idx ON webhook_replays (created_at) WHERE status = 'running';
CREATE INDEX webhook_replays_webhook_idx ON webhook_replays (webhook_id);

-- The keyset a replay walks.
CREATE INDEX webhook_events_keyset_idx ON webhook_events (created_at, id);

-- A replayed delivery names its replay. A webhook gets one live delivery per event, and
-- each replay at most one more: the database itself forbids enqueuing an event twice.
ALTER TABLE webhook_deliveries ADD COLUMN replay_id uuid REFERENCES webhook_replays (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX webhook_deliveries_live_key ON webhook_deliveries (webhook_id, event_id) WHERE replay_id IS NULL;
CREATE UNIQUE INDEX webhook_deliveries_replay_key ON webhook_deliveries (replay_id, event_id) WHERE replay_id IS NOT NULL;
CREATE INDEX webhook_deliveries_replay_pending_idx ON webhook_deliveries (replay_id) WHERE status = 'pending' AND replay_id IS NOT NULL;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_webhook_id_event_id_key;
