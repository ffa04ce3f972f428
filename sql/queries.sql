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
