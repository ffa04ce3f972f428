-- The durable record of every booking change, and the sequencer that orders
-- committed events by the time they became visible (not by id).

CREATE TABLE relay.events (
    id          bigserial PRIMARY KEY,
    channel     text        NOT NULL,
    merchant_id text,
    booking_id  text,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Assigned by relay.sequence_events() once the row is committed; readers page by it.
    position    bigint
);

-- Partial indexes: a fresh row (position NULL) touches only the small "unsequenced" index,
-- which keeps the trigger cheap; the others are filled in by the sequencer.
CREATE INDEX events_unsequenced_idx ON relay.events (id) WHERE position IS NULL;
CREATE UNIQUE INDEX events_position_idx ON relay.events (position) WHERE position IS NOT NULL;
CREATE INDEX events_merchant_position_idx ON relay.events (merchant_id, position)
    WHERE position IS NOT NULL;

CREATE TABLE relay.sequencer (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint  NOT NULL DEFAULT 0
);
INSERT INTO relay.sequencer DEFAULT VALUES;

-- Give every committed, unsequenced event the next position, in one short transaction.
-- Only one sequencer runs at a time (transaction-scoped advisory lock), and its
-- positions become visible at its commit, so a reader that has seen position P has
-- already seen every position below P: "position > cursor" never skips an event,
-- whatever order the writers committed in, and a transaction left open elsewhere
-- holds back nothing but its own rows.
--
-- The live path waits for this commit, so it does not wait for a disk flush as well
-- (synchronous_commit off: the events themselves were committed durably by their
-- writers). A PostgreSQL crash can then lose the last few sequencer commits; their
-- events are simply sequenced again. Positions never fall below the clock in
-- microseconds, so the new positions lie above every position handed out before the
-- crash: a reader may see such an event twice, but never skips one.
CREATE FUNCTION relay.sequence_events(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count bigint;
BEGIN
    SET LOCAL synchronous_commit = off;
    PERFORM pg_advisory_xact_lock(hashtext('relay.sequencer'));
    SELECT greatest(last_position, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    INTO v_base FROM relay.sequencer;
    WITH batch AS (
        SELECT e.id, row_number() OVER (ORDER BY e.id) AS rn
        FROM relay.events e
        WHERE e.position IS NULL
        ORDER BY e.id
        LIMIT max_rows
    )
    UPDATE relay.events e SET position = v_base + batch.rn
    FROM batch WHERE e.id = batch.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE relay.sequencer SET last_position = v_base + v_count;
    END IF;
    RETURN v_count;
END;
$$;

-- Sequence, then return the events after a position: one round trip for the live path.
CREATE FUNCTION relay.advance(after_position bigint, max_rows integer)
RETURNS TABLE (event_position bigint, event_id bigint, channel text, merchant_id text,
               payload jsonb, created_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM relay.sequence_events(greatest(max_rows, 1000));
    RETURN QUERY
        SELECT e.position, e.id, e.channel, e.merchant_id, e.payload, e.created_at
        FROM relay.events e
        WHERE e.position > after_position
        ORDER BY e.position
        LIMIT max_rows;
END;
$$;

-- The seed's notify_booking_changes() behaviour plus the durable row and "eventId".
CREATE FUNCTION relay.notify_booking_changes()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_id       bigint := nextval('relay.events_id_seq');
    v_channel  text;
    v_payload  json;
    v_text     text;
    v_merchant text;
    v_booking  text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_channel := 'booking_created';
        v_payload := json_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                       'status', NEW.status, 'operation', TG_OP, 'eventId', v_id);
        v_merchant := NEW."merchantId";
        v_booking := NEW.id;
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status IS NOT DISTINCT FROM NEW.status THEN
            RETURN NULL;
        END IF;
        v_channel := 'booking_updated';
        v_payload := json_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                       'oldStatus', OLD.status, 'newStatus', NEW.status,
                                       'operation', TG_OP, 'eventId', v_id);
        v_merchant := NEW."merchantId";
        v_booking := NEW.id;
    ELSE
        v_channel := 'booking_deleted';
        v_payload := json_build_object('id', OLD.id, 'merchantId', OLD."merchantId",
                                       'operation', TG_OP, 'eventId', v_id);
        v_merchant := OLD."merchantId";
        v_booking := OLD.id;
    END IF;

    INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
    VALUES (v_id, v_channel, v_merchant, v_booking, v_payload::jsonb);

    v_text := v_payload::text;
    IF octet_length(v_text) > 7900 THEN
        -- NOTIFY refuses payloads of 8000 bytes or more, which would abort the booking
        -- write. The durable row is complete; the wake-up carries only what fits.
        v_text := json_build_object('merchantId', left(v_merchant, 256), 'operation', TG_OP,
                                    'eventId', v_id, 'truncated', true)::text;
    END IF;
    PERFORM pg_notify(v_channel, v_text);
    RETURN NULL;
END;
$$;
