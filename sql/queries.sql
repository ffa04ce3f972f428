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

-- name: job_try_lock
-- Held until the end of the transaction that runs the job.
SELECT pg_try_advisory_xact_lock(hashtext('relay.job:' || $1));

-- name: job_claim_run
-- Start a run unless one started less than $2 seconds ago (by any process).
INSERT INTO relay.jobs AS j (name, last_started_at) VALUES ($1, now())
ON CONFLICT (name) DO UPDATE SET last_started_at = now()
WHERE j.last_started_at <= now() - make_interval(secs => $2)
RETURNING true;

-- name: job_finished
UPDATE relay.jobs
SET last_finished_at = clock_timestamp(), last_error = $2, runs = runs + 1,
    failures = failures + CASE WHEN $2::text IS NULL THEN 0 ELSE 1 END
WHERE name = $1;

-- name: retention_deliveries
-- Finished deliveries (succeeded, failed, cancelled) that finished before $1, a batch at a time.
DELETE FROM relay.deliveries
WHERE id IN (
    SELECT id FROM relay.deliveries
    WHERE state IN ('succeeded', 'failed', 'cancelled')
      AND coalesce(completed_at, updated_at) < $1
    LIMIT $2
);

-- name: retention_events
-- Events created before $1 that are sequenced (have a position), that every channel has
-- already planned (position not past any planning cursor), and whose deliveries are all
-- finished before $1. Their deliveries go with them (ON DELETE CASCADE).
DELETE FROM relay.events
WHERE id IN (
    SELECT e.id FROM relay.events e
    WHERE e.position IS NOT NULL
      AND e.created_at < $1
      AND e.position <= coalesce((SELECT min(c.position) FROM relay.cursors c), e.position)
      AND NOT EXISTS (
          SELECT 1 FROM relay.deliveries d
          WHERE d.event_id = e.id
            AND (d.state NOT IN ('succeeded', 'failed', 'cancelled')
                 OR coalesce(d.completed_at, d.updated_at) >= $1)
      )
    ORDER BY e.position
    LIMIT $2
);

-- name: delivery_queue_depths
-- Deliveries waiting or given up, by channel and state; a pending delivery that has
-- already been attempted counts as 'retrying'.
SELECT channel,
       CASE WHEN state = 'pending' AND attempts > 0 THEN 'retrying' ELSE state END AS state,
       count(*) AS n
FROM relay.deliveries
WHERE state IN ('pending', 'sending', 'failed')
GROUP BY 1, 2;
