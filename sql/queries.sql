-- name: max_position
SELECT last_position FROM relay.sequencer;

-- name: advance
SELECT event_position, event_id, channel, merchant_id, payload, created_at
FROM relay.advance($1, $2);

-- name: sequence_events
SELECT relay.sequence_events();

-- name: merchant_events_after
SELECT position AS event_position, id AS event_id, channel, merchant_id, payload, created_at
FROM relay.events
WHERE merchant_id = $1 AND position > $2 AND position IS NOT NULL
ORDER BY position
LIMIT $3;

-- name: oldest_position
SELECT coalesce(min(position) - 1, (SELECT last_position FROM relay.sequencer))
FROM relay.events WHERE position IS NOT NULL;

-- name: push_plan
-- One push delivery per event with $1 < position <= $2 and per live subscription of the
-- event's merchant whose channels filter (NULL = all) names the event's channel.
INSERT INTO relay.deliveries (event_id, channel, target_id, merchant_id)
SELECT e.id, 'push', s.id, e.merchant_id
FROM relay.events e
JOIN relay.push_subscriptions s ON s.merchant_id = e.merchant_id
WHERE e.position > $1 AND e.position <= $2
  AND s.gone_since IS NULL
  AND (s.expiration_time IS NULL OR s.expiration_time > now())
  AND (s.channels IS NULL OR e.channel = ANY (s.channels))
ON CONFLICT DO NOTHING;

-- name: push_subscription
SELECT id, merchant_id, endpoint, p256dh, auth, gone_since, expiration_time
FROM relay.push_subscriptions WHERE id = $1;

-- name: push_subscription_upsert
INSERT INTO relay.push_subscriptions
    (merchant_id, user_id, endpoint, p256dh, auth, expiration_time, channels)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (endpoint) DO UPDATE SET
    merchant_id = excluded.merchant_id,
    user_id = excluded.user_id,
    p256dh = excluded.p256dh,
    auth = excluded.auth,
    expiration_time = excluded.expiration_time,
    channels = excluded.channels,
    updated_at = now(),
    failure_count = 0,
    gone_since = NULL
RETURNING id, (xmax = 0) AS created;

-- name: push_subscription_delete
-- Remove the token's own subscription and cancel what was still waiting for it.
WITH removed AS (
    DELETE FROM relay.push_subscriptions
    WHERE endpoint = $1 AND merchant_id = $2 AND user_id = $3
    RETURNING id
)
UPDATE relay.deliveries d SET state = 'cancelled', updated_at = now(), completed_at = now(),
    last_error = 'subscription removed'
FROM removed
WHERE d.channel = 'push' AND d.target_id = removed.id AND d.state = 'pending';

-- name: push_subscription_sent
-- Bookkeeping after an attempt: $2 true on success.
UPDATE relay.push_subscriptions SET
    last_success_at = CASE WHEN $2 THEN now() ELSE last_success_at END,
    failure_count = CASE WHEN $2 THEN 0 ELSE failure_count + 1 END
WHERE id = $1;

-- name: push_subscription_gone
-- The push service said 404/410: no further sends; pending deliveries are cancelled.
WITH marked AS (
    UPDATE relay.push_subscriptions SET gone_since = coalesce(gone_since, now())
    WHERE id = $1
    RETURNING id
)
UPDATE relay.deliveries d SET state = 'cancelled', updated_at = now(), completed_at = now(),
    last_error = 'subscription gone'
FROM marked
WHERE d.channel = 'push' AND d.target_id = marked.id AND d.state = 'pending' AND d.id <> $2;

-- name: push_prune
-- Delete subscriptions that are gone or expired; cancel their pending deliveries.
WITH pruned AS (
    DELETE FROM relay.push_subscriptions
    WHERE gone_since IS NOT NULL OR expiration_time <= now()
    RETURNING id
), cancelled AS (
    UPDATE relay.deliveries d SET state = 'cancelled', updated_at = now(), completed_at = now(),
        last_error = 'subscription pruned'
    FROM pruned
    WHERE d.channel = 'push' AND d.target_id = pruned.id AND d.state = 'pending'
)
SELECT count(*) FROM pruned;
