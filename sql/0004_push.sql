-- Browser PushSubscriptions of merchants' staff devices, one row per endpoint.
-- channels NULL means every booking channel. gone_since is set when the push service
-- answers 404/410; the scheduler's prune job deletes gone and expired rows.

CREATE TABLE relay.push_subscriptions (
    id              bigserial   PRIMARY KEY,
    merchant_id     text        NOT NULL,
    user_id         text        NOT NULL,
    endpoint        text        NOT NULL UNIQUE,
    p256dh          text        NOT NULL,
    auth            text        NOT NULL,
    expiration_time timestamptz,
    channels        text[],
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    failure_count   integer     NOT NULL DEFAULT 0,
    gone_since      timestamptz
);
-- Planning joins events to the live subscriptions of their merchant.
CREATE INDEX push_subscriptions_merchant_idx ON relay.push_subscriptions (merchant_id)
    WHERE gone_since IS NULL;
