-- name: max_position
SELECT last_position FROM relay.sequencer;

-- name: advance
SELECT event_position, event_id, channel, merchant_id, payload, created_at
FROM relay.advance($1, $2);

-- name: sequence_events
SELECT relay.sequence_events();

-- name: ping
SELECT 1;

-- name: backend_pid
SELECT pg_backend_pid();

-- name: notify_queue_usage
SELECT pg_notification_queue_usage();

-- name: notify
SELECT pg_notify($1, $2);

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
-- Events created before $1 that are sequenced (have a position), that every destination kind has
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
-- Deliveries waiting or given up, by destination kind (column channel) and state; a pending delivery that has
-- already been attempted counts as 'retrying'.
SELECT channel,
       CASE WHEN state = 'pending' AND attempts > 0 THEN 'retrying' ELSE state END AS state,
       count(*) AS n
FROM relay.deliveries
WHERE state IN ('pending', 'sending', 'failed')
GROUP BY 1, 2;
-- ---------------------------------------------------------------- dispatcher

-- name: cursor_create
INSERT INTO relay.cursors (name, position)
SELECT $1, last_position FROM relay.sequencer
ON CONFLICT (name) DO NOTHING;

-- name: plan_window
-- Lock the planning cursor of kind $1 until the transaction ends; its position, the
-- position of the $2-th sequenced event after it (positions have gaps; the position itself
-- when none is waiting), and the last position sequenced.
SELECT c.position,
       coalesce((
           SELECT max(position) FROM (
               SELECT position FROM relay.events
               WHERE position > c.position AND position IS NOT NULL
               ORDER BY position
               LIMIT $2
           ) AS next_batch
       ), c.position) AS upto,
       (SELECT last_position FROM relay.sequencer) AS last
FROM relay.cursors c
WHERE c.name = $1
FOR UPDATE OF c;

-- name: cursor_set
UPDATE relay.cursors SET position = $2 WHERE name = $1;

-- name: deliveries_claim
-- Due deliveries of destination kind $1 (column channel; target_id is the destination),
-- at most $2, within what this process may still hold:
-- per destination $6, per merchant $8 and per host $10 (column destination), less what it already
-- holds ($5, $7, $9: JSON objects key -> count; $11, $12, $13: the keys already at their cap).
-- So one merchant's or one host's backlog cannot crowd out the others; what is over stays
-- unclaimed and due. The keys at their cap are skipped while the due index is read in
-- order (a list, which the planner estimates as letting most rows through: it reads the
-- index and stops early instead of scanning and sorting a burst's whole backlog); the
-- counts apply to the few candidates read. A claim is a lease: next_attempt_at moves to
-- its end, so a delivery held by a process that died becomes due again by itself. The
-- outer conditions are re-checked on the locked row version (another process may have
-- claimed it meanwhile).
WITH candidates AS (
    SELECT id, destination,
           coalesce(($5::jsonb ->> target_id::text)::int, 0) AS target_held,
           coalesce(($7::jsonb ->> coalesce(merchant_id, ''))::int, 0) AS merchant_held,
           coalesce(($9::jsonb ->> destination)::int, 0) AS host_held,
           row_number() OVER (PARTITION BY target_id ORDER BY next_attempt_at, id) AS by_target,
           row_number() OVER (PARTITION BY merchant_id ORDER BY next_attempt_at, id) AS by_merchant,
           row_number() OVER (PARTITION BY destination ORDER BY next_attempt_at, id) AS by_host
    FROM (
        SELECT id, target_id, merchant_id, destination, next_attempt_at
        FROM relay.deliveries
        WHERE channel = $1 AND state IN ('pending', 'sending') AND next_attempt_at <= now()
          AND target_id <> ALL ($11::bigint[]) AND coalesce(merchant_id, '') <> ALL ($12::text[])
          AND (destination IS NULL OR destination <> ALL ($13::text[]))
        ORDER BY next_attempt_at
        LIMIT $2::int * 4
    ) allowed
), picked AS (
    SELECT d.id
    FROM relay.deliveries d JOIN candidates c ON c.id = d.id
    WHERE c.by_target <= $6 - c.target_held AND c.by_merchant <= $8 - c.merchant_held
      AND (c.destination IS NULL OR c.by_host <= $10 - c.host_held)
      AND d.state IN ('pending', 'sending') AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE relay.deliveries d
SET state = 'sending', locked_by = $3, locked_until = now() + $4::float8 * interval '1 second',
    next_attempt_at = now() + $4::float8 * interval '1 second', updated_at = now()
FROM picked, relay.events e
WHERE d.id = picked.id AND e.id = d.event_id
RETURNING d.id, d.event_id, d.channel, d.target_id, d.merchant_id, d.destination, d.attempts,
          e.position AS event_position, e.channel AS event_channel, e.merchant_id AS event_merchant_id,
          e.payload, e.created_at;

-- name: deliveries_renew
-- Rows locked at this moment are skipped: they are being recorded (their lease ends with
-- it), and waiting for them could lock rows in the opposite order from the record's.
-- Looked up by id, as deliveries_record.
UPDATE relay.deliveries d
SET locked_until = now() + $3::float8 * interval '1 second', next_attempt_at = now() + $3::float8 * interval '1 second'
FROM (
    SELECT id FROM relay.deliveries
    WHERE id = ANY ($1::bigint[]) AND locked_by = $2
    ORDER BY id
    FOR UPDATE SKIP LOCKED
) held
WHERE d.id = held.id AND d.locked_by = $2 AND coalesce(d.state = 'sending', false);

-- name: deliveries_record
-- A batch of outcomes in one statement, one row each: an attempt (state $2, the delay $3
-- before the next one, what the target answered), or a hand-back without using up an
-- attempt (state NULL: pending again after the delay; shutdown, a database error before
-- the send, or a target already busy in this process). The rows are looked up by id, in
-- the order given (Store.record sorts them): the state test is written so the planner
-- cannot read it off the due index, which it otherwise scanned whole (every delivery in
-- flight, 10,000 in a burst) for a batch of 200.
UPDATE relay.deliveries d
SET state = coalesce(u.state, 'pending'),
    attempts = d.attempts + CASE WHEN u.state IS NULL THEN 0 ELSE 1 END,
    next_attempt_at = now() + u.delay * interval '1 second',
    locked_by = NULL, locked_until = NULL,
    last_status = CASE WHEN u.state IS NULL THEN d.last_status ELSE u.status END,
    last_error = CASE WHEN u.state IS NULL THEN d.last_error ELSE u.error END,
    last_response_ms = CASE WHEN u.state IS NULL THEN d.last_response_ms ELSE u.ms END,
    completed_at = CASE WHEN u.state IN ('succeeded', 'failed') THEN now() END,
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::int[], $5::text[], $6::int[])
     AS u(id, state, delay, status, error, ms)
WHERE d.id = u.id AND d.locked_by = $7 AND coalesce(d.state = 'sending', false);

-- name: deliveries_replay_failed
-- Give failed deliveries a fresh set of attempts: all of them, or only ids in $1
-- (optionally only those of one endpoint, $2).
UPDATE relay.deliveries
SET state = 'pending', attempts = 0, next_attempt_at = now(), completed_at = NULL,
    locked_by = NULL, locked_until = NULL, updated_at = now()
WHERE channel = 'webhook'
  AND ($1::bigint[] IS NULL OR id = ANY ($1::bigint[]))
  AND ($2::bigint IS NULL OR target_id = $2)
  AND (state = 'failed' OR ($1::bigint[] IS NOT NULL AND state IN ('succeeded', 'cancelled')))
RETURNING id;

-- ---------------------------------------------------------------- webhooks

-- name: webhook_plan
-- One webhook delivery per event with $1 < position <= $2 and per enabled endpoint of the
-- event's merchant whose filter (NULL = all) names the event or its source (NAME_*).
-- destination: the URL's host and port (credentials are never part of a stored URL).
INSERT INTO relay.deliveries (event_id, channel, target_id, merchant_id, destination)
SELECT e.id, 'webhook', w.id, e.merchant_id, lower(substring(w.url from '://([^/?#]*)'))
FROM relay.events e
JOIN relay.webhook_endpoints w
  ON w.merchant_id = e.merchant_id AND w.enabled
 AND (w.events IS NULL OR e.channel = ANY (w.events)
      OR regexp_replace(e.channel, '_(created|updated|deleted)$', '_*') = ANY (w.events))
 AND w.created_at <= e.created_at
WHERE e.position > $1 AND e.position <= $2
-- Event by event (ids follow), so a claim's first candidates span every target of a burst.
ORDER BY e.position, w.id
ON CONFLICT (event_id, channel, target_id) DO NOTHING;

-- name: webhook_endpoint
SELECT id, merchant_id, url, events, secret, previous_secret, previous_secret_expires_at,
       enabled, disabled_reason, failing_since
FROM relay.webhook_endpoints WHERE id = $1;

-- name: webhook_endpoints_by_id
-- The endpoints of a claimed batch, read at once.
SELECT id, merchant_id, url, events, secret, previous_secret, previous_secret_expires_at,
       enabled, disabled_reason, failing_since
FROM relay.webhook_endpoints WHERE id = ANY ($1::bigint[]);

-- name: webhook_merchant_lock
-- Held until the transaction ends: registrations of one merchant happen one at a time,
-- so the count checked against the limit is still true at the insert.
SELECT pg_advisory_xact_lock(hashtext('relay.webhook_endpoints'), hashtext($1));

-- name: webhook_count
SELECT count(*) FROM relay.webhook_endpoints WHERE merchant_id = $1;

-- name: webhook_add
INSERT INTO relay.webhook_endpoints (merchant_id, url, events, secret)
VALUES ($1, $2, $3, $4)
RETURNING id, merchant_id, url, events, enabled, disabled_reason, failing_since, created_at;

-- name: webhook_list
SELECT id, merchant_id, url, events, enabled, disabled_reason, disabled_at, failing_since,
       previous_secret_expires_at, created_at
FROM relay.webhook_endpoints
WHERE ($1::text IS NULL OR merchant_id = $1)
ORDER BY id;

-- name: webhook_delete
-- Remove a merchant's endpoint and cancel what was still waiting for it.
WITH removed AS (
    DELETE FROM relay.webhook_endpoints WHERE id = $1 AND merchant_id = $2 RETURNING id
), cancelled AS (
    UPDATE relay.deliveries d SET state = 'cancelled', updated_at = now()
    FROM removed
    WHERE d.channel = 'webhook' AND d.target_id = removed.id AND d.state = 'pending'
)
SELECT count(*) FROM removed;

-- name: webhook_disable
UPDATE relay.webhook_endpoints
SET enabled = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
WHERE id = $1 AND enabled
RETURNING id;

-- name: webhook_enable
UPDATE relay.webhook_endpoints
SET enabled = true, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL, updated_at = now()
WHERE id = $1
RETURNING id;

-- name: webhook_rotate
UPDATE relay.webhook_endpoints
SET previous_secret = secret, previous_secret_expires_at = now() + $3::float8 * interval '1 second',
    secret = $2, updated_at = now()
WHERE id = $1
RETURNING id;

-- name: webhook_failing
UPDATE relay.webhook_endpoints
SET failing_since = coalesce(failing_since, now()), updated_at = now()
WHERE id = $1 AND failing_since IS NULL;

-- name: webhook_recovered
UPDATE relay.webhook_endpoints
SET failing_since = NULL, updated_at = now()
WHERE id = $1 AND failing_since IS NOT NULL;

-- name: webhook_disable_failing
UPDATE relay.webhook_endpoints
SET enabled = false, disabled_at = now(), updated_at = now(),
    disabled_reason = 'failing continuously since ' || to_char(failing_since AT TIME ZONE 'UTC',
                      'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ' (more than ' || $1::float8::text || ' days)'
WHERE enabled AND failing_since IS NOT NULL AND failing_since < now() - $1::float8 * interval '1 day'
RETURNING id, merchant_id;

-- name: push_plan
-- One push delivery per event with $1 < position <= $2 and per live subscription of the
-- event's merchant whose channels filter (NULL = all) names the event or its source (NAME_*).
INSERT INTO relay.deliveries (event_id, channel, target_id, merchant_id, destination)
SELECT e.id, 'push', s.id, e.merchant_id, lower(substring(s.endpoint from '://([^/?#]*)'))
FROM relay.events e
JOIN relay.push_subscriptions s ON s.merchant_id = e.merchant_id
WHERE e.position > $1 AND e.position <= $2
  AND s.gone_since IS NULL
  AND (s.expiration_time IS NULL OR s.expiration_time > now())
  AND (s.channels IS NULL OR e.channel = ANY (s.channels)
       OR regexp_replace(e.channel, '_(created|updated|deleted)$', '_*') = ANY (s.channels))
ORDER BY e.position, s.id
ON CONFLICT DO NOTHING;

-- name: push_subscription
SELECT id, merchant_id, endpoint, p256dh, auth, gone_since, expiration_time,
       failure_count, last_success_at > now() - interval '60 seconds' AS recent_success
FROM relay.push_subscriptions WHERE id = $1;

-- name: push_subscriptions_by_id
-- The subscriptions of a claimed batch, read at once.
SELECT id, merchant_id, endpoint, p256dh, auth, gone_since, expiration_time,
       failure_count, last_success_at > now() - interval '60 seconds' AS recent_success
FROM relay.push_subscriptions WHERE id = ANY ($1::bigint[]);

-- name: push_subscription_lock
-- Held until the transaction ends: one merchant's subscriptions change one at a time, so
-- the counts checked against the limits are still true at the upsert.
SELECT pg_advisory_xact_lock(hashtext('relay.push_subscriptions'), hashtext($1));

-- name: push_subscription_quota
-- The live subscriptions of merchant $1 and of its user $2, and whether endpoint $3 is
-- already one of them (re-posting it adds nothing).
SELECT count(*) AS merchant_live,
       count(*) FILTER (WHERE user_id = $2) AS user_live,
       coalesce(bool_or(endpoint = $3), false) AS endpoint_live,
       coalesce(bool_or(endpoint = $3 AND user_id = $2), false) AS endpoint_live_for_user
FROM relay.push_subscriptions
WHERE merchant_id = $1 AND gone_since IS NULL AND (expiration_time IS NULL OR expiration_time > now());

-- name: push_subscription_upsert
-- One row per merchant and endpoint. A re-post under the same merchant updates the row
-- (new keys, and the posting user: the browser is now theirs); another merchant's post
-- of the same endpoint conflicts with nothing here and gets a row of its own.
INSERT INTO relay.push_subscriptions
    (merchant_id, user_id, endpoint, p256dh, auth, expiration_time, channels)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (merchant_id, endpoint) DO UPDATE SET
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

-- ---------------------------------------------------------------- presence

-- name: presence_register
-- Take or renew a process's presence lease; true when its row was missing (a new process,
-- or one whose lease ran out and whose counts another process removed).
INSERT INTO relay.presence_processes (process_id, lease_until, slot)
VALUES ($1, now() + make_interval(secs => $2), $3)
ON CONFLICT (process_id) DO UPDATE SET lease_until = EXCLUDED.lease_until
RETURNING xmax = 0 AS registered;

-- name: presence_flush
-- One process's connection counts per (merchant, user), absolute (0: none left), in one
-- statement, and the notifications naming the merchants (sent at commit).
WITH changes AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::int[]) AS c(merchant_id, user_id, connections)
), removed AS (
    DELETE FROM relay.presence p USING changes c
    WHERE p.process_id = $1 AND c.connections = 0
      AND p.merchant_id = c.merchant_id AND p.user_id = c.user_id
), stored AS (
    INSERT INTO relay.presence (merchant_id, user_id, process_id, connections)
    SELECT merchant_id, user_id, $1, connections FROM changes WHERE connections > 0
    ON CONFLICT (merchant_id, user_id, process_id) DO UPDATE SET connections = EXCLUDED.connections
)
SELECT count(pg_notify($5, payload)) FROM unnest($6::text[]) AS payload;

-- name: presence_remove
-- Remove the processes whose lease ran out, process $1 (leaving; NULL: none) and the
-- earlier processes of slot $2 but $3 (NULL: none), with their counts; the merchants whose
-- presence that changed.
WITH gone AS (
    DELETE FROM relay.presence_processes
    WHERE lease_until < now() OR process_id = $1 OR (slot = $2 AND process_id <> $3)
    RETURNING process_id
), removed AS (
    DELETE FROM relay.presence p USING gone WHERE p.process_id = gone.process_id
    RETURNING p.merchant_id
)
SELECT DISTINCT merchant_id FROM removed;

-- name: presence_counts
-- Connections per user of the merchants named, over every live process but $2.
SELECT p.merchant_id, p.user_id, sum(p.connections)::int AS connections
FROM relay.presence p
JOIN relay.presence_processes r USING (process_id)
WHERE p.merchant_id = ANY($1::text[]) AND p.process_id <> $2 AND r.lease_until > now()
GROUP BY p.merchant_id, p.user_id;

-- ---------------------------------------------------------------- sources

-- name: sources_list
SELECT entity, table_name, tenant_column, key_column, watch, fields
FROM relay.sources ORDER BY entity;

-- name: source_attach
SELECT entity, table_name, tenant_column, key_column, watch, fields
FROM relay.attach_source($1, $2, $3, $4, $5, $6);

-- name: source_detach
SELECT entity, table_name, tenant_column, key_column, watch, fields
FROM relay.detach_source($1);

-- name: attach_booking
SELECT relay.attach_booking();

-- name: sources_without_trigger
-- Attached sources whose trigger is gone (their table was dropped, or recreated), or in wal
-- mode whose table is not in the publication.
SELECT entity, table_name, tenant_column, key_column, watch, fields
FROM relay.sources s
WHERE entity <> 'booking' AND NOT relay.source_captured(s)
ORDER BY entity;

-- ---------------------------------------------------------------- capture modes

-- name: capture_mode
SELECT mode FROM relay.capture;

-- name: set_capture
-- Rewrites every source's trigger function for the mode; returns the mode it replaced.
SELECT relay.set_capture($1);

-- name: events_after
-- The feed's pass when the poller sequences (poll mode): read by position only.
SELECT position AS event_position, id AS event_id, channel, merchant_id, payload, created_at
FROM relay.events
WHERE position > $1
ORDER BY position
LIMIT $2;

-- name: leader_try_lock
-- A session lock ($1: relay.poller or relay.wal), held by a leader's own connection for as
-- long as it leads its capture mode.
SELECT pg_try_advisory_lock(hashtext($1));

-- name: leader_lock
-- The same lock, waited for (`relay capture` leaving wal mode reads the slot itself).
SELECT pg_advisory_lock(hashtext($1));

-- name: leader_unlock
SELECT pg_advisory_unlock(hashtext($1));

-- name: poll_events
SELECT relay.poll_events($1);

-- name: leader_backend
-- The backend that holds the lock $1 in this database, or none.
SELECT l.pid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)::bigint;

-- ---------------------------------------------------------------- capture mode wal

-- name: wal_refusal
SELECT relay.wal_refusal();

-- name: wal_publication
SELECT relay.wal_publication();

-- name: wal_slot_create
-- Run alone: a slot cannot be created in a transaction that has written.
SELECT pg_create_logical_replication_slot('relay', 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'relay');

-- name: wal_slot_drop
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE slot_name = 'relay' AND database = current_database();

-- name: wal_slot
-- The slot: how far it was read, what WAL it keeps, and whether that is still there.
SELECT wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots WHERE slot_name = 'relay' AND database = current_database();

-- name: wal_peek
-- Up to $1 messages (whole transactions: a larger one comes whole) committed before the
-- WAL flushed so far, which comes first ("upto") even when there is none.
SELECT u.upto, c.lsn, c.data
FROM (SELECT pg_current_wal_flush_lsn() AS upto) u
LEFT JOIN LATERAL pg_logical_slot_peek_binary_changes(
    'relay', u.upto, $1, 'proto_version', '1', 'publication_names', 'relay') c ON true;

-- name: wal_columns
-- The columns of tables, as their row type has them (what a row literal lists).
SELECT attrelid::bigint AS relid, array_agg(attname::text ORDER BY attnum) AS columns
FROM pg_attribute
WHERE attrelid = ANY ($1::oid[]) AND attnum > 0 AND NOT attisdropped
GROUP BY attrelid;

-- name: wal_record
SELECT relay.wal_record($1::oid[], $2::text[], $3::text[], $4::text[], $5::pg_lsn[], $6::int[]);

-- name: wal_advance
SELECT pg_replication_slot_advance('relay', $1::pg_lsn);

-- name: wal_snapshot_allowed
-- Whether this role may log a running-transactions record (PostgreSQL 16 and later;
-- superusers, or a role granted EXECUTE on the function).
SELECT coalesce(has_function_privilege(to_regprocedure('pg_log_standby_snapshot()'), 'EXECUTE'), false);

-- name: wal_log_snapshot
SELECT pg_log_standby_snapshot();

-- ---------------------------------------------------------------- migrations and checks

-- name: migrate_lock
-- Held until the migrating transaction ends: a second `relay migrate` waits, then finds
-- nothing left to do.
SELECT pg_advisory_xact_lock(hashtext('relay.migrate'));

-- name: booking_table_exists
SELECT to_regclass('"Booking"') IS NOT NULL;

-- name: search_path
SHOW search_path;

-- name: server_version
SHOW server_version;

-- name: migrations_table
CREATE SCHEMA IF NOT EXISTS relay;
CREATE TABLE IF NOT EXISTS relay.schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT name FROM relay.schema_migrations;

-- name: migration_record
INSERT INTO relay.schema_migrations (name) VALUES ($1);

-- name: schema_present
SELECT to_regclass('relay.schema_migrations') IS NOT NULL;

-- name: migrations_count
SELECT count(*) FROM relay.schema_migrations;

-- name: booking_captured
-- The trigger on "Booking", or in wal mode "Booking" in the publication.
SELECT coalesce((SELECT relay.source_captured(s) FROM relay.sources s WHERE entity = 'booking'), false);

-- name: trigger_attached
SELECT EXISTS (
    SELECT 1 FROM pg_trigger t
    JOIN pg_proc p ON p.oid = t.tgfoid
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE t.tgrelid = to_regclass('"Booking"')
      AND n.nspname = 'relay' AND p.proname = 'notify_booking_changes'
      AND NOT t.tgisinternal
);
