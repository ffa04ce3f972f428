-- Merchant webhook endpoints. A delivery row (relay.deliveries, channel 'webhook')
-- exists for every event x enabled endpoint of the event's merchant whose filter matches.

CREATE TABLE relay.webhook_endpoints (
    id                          bigserial   PRIMARY KEY,
    merchant_id                 text        NOT NULL,
    url                         text        NOT NULL,
    events                      text[],     -- NULL: every channel
    secret                      text        NOT NULL,  -- whsec_<base64 key>
    previous_secret             text,       -- still signed with until it expires (rotation)
    previous_secret_expires_at  timestamptz,
    enabled                     boolean     NOT NULL DEFAULT true,
    disabled_reason             text,
    disabled_at                 timestamptz,
    failing_since               timestamptz,  -- first failure of the current streak
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_merchant_idx ON relay.webhook_endpoints (merchant_id) WHERE enabled;

-- Plan from the position at install time: history before it is not delivered.
INSERT INTO relay.cursors (name, position)
SELECT 'webhook', last_position FROM relay.sequencer
ON CONFLICT (name) DO NOTHING;
