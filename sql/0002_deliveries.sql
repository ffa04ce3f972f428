-- One row per event x target, created before anything is sent, so a crash never
-- loses a delivery. Channels ('webhook', 'push') share this table and the dispatcher.

CREATE TABLE relay.deliveries (
    id               bigserial PRIMARY KEY,
    event_id         bigint      NOT NULL REFERENCES relay.events (id) ON DELETE CASCADE,
    channel          text        NOT NULL,
    target_id        bigint      NOT NULL,
    merchant_id      text,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'succeeded', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    locked_by        text,
    last_status      integer,
    last_error       text,
    last_response_ms integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    UNIQUE (event_id, channel, target_id)
);
CREATE INDEX deliveries_due_idx ON relay.deliveries (next_attempt_at)
    WHERE state IN ('pending', 'sending');
CREATE INDEX deliveries_target_idx ON relay.deliveries (channel, target_id, state);

-- How far each channel has planned deliveries (a position in relay.events). Starts at
-- the current position: history before Relay was installed is not delivered.
CREATE TABLE relay.cursors (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);
