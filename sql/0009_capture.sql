-- Capture modes (DESIGN.md "Capture modes"): how committed changes of the sources reach Relay.
--
-- * notify (the default): each source's trigger writes the durable row in relay.events and
--   NOTIFYs, as 0001 and 0008 made them.
-- * poll: the trigger writes the durable row, in relay.inbox, and nothing else. No NOTIFY
--   runs in the application's transaction, so its commit never queues on NOTIFY's
--   database-wide commit lock; and the row touches one small index instead of relay.events'
--   four. One relay process at a time polls (relay.poll_events): the sequencer moves what
--   committed into relay.events, with its position, and one NOTIFY relay_wake per batch,
--   from the poller's own connection, wakes the other processes.
-- * wal: not built yet (relay.set_capture refuses it).
--
-- The mode lives here, so every relay process and every session shares it. Switching
-- rewrites every source's trigger function with CREATE OR REPLACE FUNCTION: PL/pgSQL looks
-- a function up again at each call, so sessions already open follow from their next
-- transaction on, without reconnecting.

CREATE TABLE relay.capture (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    mode       text        NOT NULL DEFAULT 'notify' CHECK (mode IN ('notify', 'poll', 'wal')),
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay.capture DEFAULT VALUES;

-- Changes written by poll-mode triggers, each durable at its writer's commit, until the
-- sequencer moves it into relay.events with its position (the same id, so eventId is the
-- same). One index, in id order: what the poller reads, and all a fresh row touches.
CREATE TABLE relay.inbox (
    id          bigint      NOT NULL DEFAULT nextval('relay.events_id_seq'),
    channel     text        NOT NULL,
    merchant_id text,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_id_idx ON relay.inbox (id);

-- The built-in booking trigger function in a mode. In notify mode it is 0001's, byte for
-- byte. In poll mode the write is as light as it can be (bench/capture.py measures each
-- part): one INSERT into relay.inbox whose id comes from the column default, a payload
-- built as jsonb at once (json_build_object followed by a cast to jsonb parses the text a
-- second time), no booking_id (no reader uses it) and no eventId, which the sequencer adds
-- from the id.
CREATE FUNCTION relay.booking_function_sql(p_mode text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $gen$
DECLARE
    v_body text;
BEGIN
    IF p_mode = 'notify' THEN
        v_body := $b$
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
$b$;
    ELSE
        v_body := $b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.inbox (channel, merchant_id, payload)
        VALUES ('booking_created', NEW."merchantId",
                jsonb_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                   'status', NEW.status, 'operation', 'INSERT'));
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status IS DISTINCT FROM NEW.status THEN
            INSERT INTO relay.inbox (channel, merchant_id, payload)
            VALUES ('booking_updated', NEW."merchantId",
                    jsonb_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                       'oldStatus', OLD.status, 'newStatus', NEW.status,
                                       'operation', 'UPDATE'));
        END IF;
    ELSE
        INSERT INTO relay.inbox (channel, merchant_id, payload)
        VALUES ('booking_deleted', OLD."merchantId",
                jsonb_build_object('id', OLD.id, 'merchantId', OLD."merchantId", 'operation', 'DELETE'));
    END IF;
    RETURN NULL;
END;
$b$;
    END IF;
    RETURN format('CREATE OR REPLACE FUNCTION relay.notify_booking_changes() RETURNS trigger '
                  'LANGUAGE plpgsql AS %L', v_body);
END;
$gen$;

-- An attached source's trigger function in a mode: 0008's in notify mode, and in poll mode
-- the same payload written the booking function's light way, into relay.inbox (values
-- rendered by to_jsonb, as json_build_object's output cast to jsonb renders them).
DROP FUNCTION relay.source_function_sql(relay.sources);
CREATE FUNCTION relay.source_function_sql(s relay.sources, p_mode text)
RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
DECLARE
    v_fields  text := '';
    v_changes text := '';
    v_col     text;
    v_body    text;
BEGIN
    FOREACH v_col IN ARRAY s.fields LOOP
        v_fields := v_fields || format(', %L, NEW.%I', v_col, v_col);
    END LOOP;
    IF cardinality(s.watch) > 0 THEN
        v_changes := E'\n        v_changes := ''{}'';';
        FOREACH v_col IN ARRAY s.watch LOOP
            v_changes := v_changes || format($w$
        IF OLD.%1$I IS DISTINCT FROM NEW.%1$I THEN
            v_changes := v_changes || jsonb_build_object(%2$L, jsonb_build_object(
                'old', to_jsonb(OLD.%1$I), 'new', to_jsonb(NEW.%1$I)));
        END IF;$w$, v_col, v_col);
        END LOOP;
    ELSE
        v_changes := $a$
        SELECT coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)), '{}')
        INTO v_changes FROM jsonb_each(to_jsonb(NEW)) n JOIN jsonb_each(to_jsonb(OLD)) o USING (key)
        WHERE n.value IS DISTINCT FROM o.value;$a$;
    END IF;
    IF p_mode = 'notify' THEN
        v_body := format($f$
DECLARE
    v_id       bigint := nextval('relay.events_id_seq');
    v_channel  text;
    v_payload  json;
    v_text     text;
    v_merchant text;
    v_key      text;
    v_changes  jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_channel := %1$L;
        v_merchant := NEW.%4$I::text;
        v_key := NEW.%5$I::text;
        v_payload := json_build_object('id', v_key, 'merchantId', v_merchant, 'operation', TG_OP,
                                       'eventId', v_id%6$s);
    ELSIF TG_OP = 'UPDATE' THEN%7$s
        IF v_changes = '{}' THEN
            RETURN NULL;
        END IF;
        v_channel := %2$L;
        v_merchant := NEW.%4$I::text;
        v_key := NEW.%5$I::text;
        v_payload := json_build_object('id', v_key, 'merchantId', v_merchant, 'operation', TG_OP,
                                       'eventId', v_id, 'changes', v_changes%6$s);
    ELSE
        v_channel := %3$L;
        v_merchant := OLD.%4$I::text;
        v_key := OLD.%5$I::text;
        v_payload := json_build_object('id', v_key, 'merchantId', v_merchant, 'operation', TG_OP,
                                       'eventId', v_id);
    END IF;

    INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
    VALUES (v_id, v_channel, v_merchant, v_key, v_payload::jsonb);

    v_text := v_payload::text;
    IF octet_length(v_text) > 7900 THEN
        -- As for bookings: NOTIFY refuses 8000 bytes, and the write must not fail for it.
        v_text := json_build_object('merchantId', left(v_merchant, 256), 'operation', TG_OP,
                                    'eventId', v_id, 'truncated', true)::text;
    END IF;
    PERFORM pg_notify(v_channel, v_text);
    RETURN NULL;
END;
$f$, s.entity || '_created', s.entity || '_updated', s.entity || '_deleted',
     s.tenant_column, s.key_column, v_fields, v_changes);
    ELSE
        v_body := format($f$
DECLARE
    v_changes  jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.inbox (channel, merchant_id, payload)
        VALUES (%1$L, NEW.%4$I::text,
                jsonb_build_object('id', NEW.%5$I::text, 'merchantId', NEW.%4$I::text,
                                   'operation', 'INSERT'%6$s));
    ELSIF TG_OP = 'UPDATE' THEN%7$s
        IF v_changes = '{}' THEN
            RETURN NULL;
        END IF;
        INSERT INTO relay.inbox (channel, merchant_id, payload)
        VALUES (%2$L, NEW.%4$I::text,
                jsonb_build_object('id', NEW.%5$I::text, 'merchantId', NEW.%4$I::text,
                                   'operation', 'UPDATE', 'changes', v_changes%6$s));
    ELSE
        INSERT INTO relay.inbox (channel, merchant_id, payload)
        VALUES (%3$L, OLD.%4$I::text,
                jsonb_build_object('id', OLD.%5$I::text, 'merchantId', OLD.%4$I::text,
                                   'operation', 'DELETE'));
    END IF;
    RETURN NULL;
END;
$f$, s.entity || '_created', s.entity || '_updated', s.entity || '_deleted',
             s.tenant_column, s.key_column, v_fields, v_changes);
    END IF;
    RETURN format('CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger LANGUAGE plpgsql AS %L',
                  'source_' || s.entity, v_body);
END;
$gen$;

-- One source's trigger function in a mode, as a CREATE OR REPLACE FUNCTION statement.
CREATE FUNCTION relay.capture_function_sql(s relay.sources, p_mode text)
RETURNS text
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN s.entity = 'booking' THEN relay.booking_function_sql(p_mode)
            ELSE relay.source_function_sql(s, p_mode) END
$$;

-- (Re)write one source's trigger function for the current mode, and its trigger. As in
-- 0008, the built-in booking source keeps the seed's trigger name (replacing a seed
-- trigger already in place) and relay.notify_booking_changes().
CREATE OR REPLACE FUNCTION relay.install_source(p_entity text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s          relay.sources;
    v_trigger  text;
    v_function text;
BEGIN
    SELECT * INTO STRICT s FROM relay.sources WHERE entity = p_entity;
    EXECUTE relay.capture_function_sql(s, (SELECT mode FROM relay.capture));
    IF s.entity = 'booking' THEN
        v_trigger := 'booking_changes_trigger';
        v_function := 'notify_booking_changes';
    ELSE
        v_trigger := 'relay_' || s.entity || '_changes';
        v_function := 'source_' || s.entity;
    END IF;
    -- table_oid::text is the table's name, schema-qualified and quoted where needed.
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = s.table_oid AND tgname = v_trigger) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, s.table_oid);
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION relay.%I()', v_trigger, s.table_oid, v_function);
END;
$$;

-- `relay capture MODE`: record the mode and rewrite every source's trigger function for it,
-- in one transaction, under the lock attach and detach take; then every relay process
-- hears relay_sources and follows. Only the functions are replaced: no trigger is dropped,
-- so the switch takes no lock on the application's tables and waits for none of its
-- transactions. Returns the mode it replaced. Refusals raise SQLSTATE 22023 in one line.
CREATE FUNCTION relay.set_capture(p_mode text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s     relay.sources;
    v_old text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    IF p_mode IS NULL OR p_mode NOT IN ('notify', 'poll', 'wal') THEN
        RAISE EXCEPTION 'unknown capture mode %: the modes are notify, poll and wal',
            quote_literal(coalesce(p_mode, '')) USING ERRCODE = '22023';
    END IF;
    IF p_mode = 'wal' THEN
        RAISE EXCEPTION 'capture mode wal is not built yet: the modes available are notify and poll'
            USING ERRCODE = '22023';
    END IF;
    SELECT mode INTO STRICT v_old FROM relay.capture FOR UPDATE;
    UPDATE relay.capture SET mode = p_mode, changed_at = now();
    FOR s IN SELECT * FROM relay.sources ORDER BY entity LOOP
        EXECUTE relay.capture_function_sql(s, p_mode);
    END LOOP;
    PERFORM pg_notify('relay_sources', 'capture');
    RETURN v_old;
END;
$$;

-- 0001's sequencer, which also moves what committed in relay.inbox (poll mode) into
-- relay.events: every committed event waiting in either, in id order, gets the next
-- position in one short transaction, as before. A moved row keeps its id and gets its
-- eventId (that id) in its payload, so readers get the same payload in every mode and the
-- application's write does not build it.
CREATE OR REPLACE FUNCTION relay.sequence_events(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_base  bigint;
    v_count bigint;
BEGIN
    SET LOCAL synchronous_commit = off;
    PERFORM pg_advisory_xact_lock(hashtext('relay.sequencer'));
    SELECT greatest(last_position, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    INTO v_base FROM relay.sequencer;
    WITH waiting AS (
        (SELECT i.id, true AS inbox FROM relay.inbox i ORDER BY i.id LIMIT max_rows)
        UNION ALL
        (SELECT e.id, false FROM relay.events e WHERE e.position IS NULL ORDER BY e.id LIMIT max_rows)
    ), batch AS (
        SELECT id, inbox, v_base + row_number() OVER (ORDER BY id) AS position
        FROM waiting ORDER BY id LIMIT max_rows
    ), moved AS (
        DELETE FROM relay.inbox i USING batch b WHERE b.inbox AND i.id = b.id
        RETURNING i.id, i.channel, i.merchant_id, i.payload, i.created_at, b.position
    ), inserted AS (
        INSERT INTO relay.events (id, channel, merchant_id, payload, created_at, position)
        SELECT id, channel, merchant_id, payload || jsonb_build_object('eventId', id), created_at, position
        FROM moved
        RETURNING 1
    ), updated AS (
        UPDATE relay.events e SET position = b.position
        FROM batch b WHERE NOT b.inbox AND e.id = b.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM inserted) + (SELECT count(*) FROM updated) INTO v_count;
    IF v_count > 0 THEN
        UPDATE relay.sequencer SET last_position = v_base + v_count;
    END IF;
    RETURN v_count;
END;
$$;

-- The poller's pass (poll mode; one relay process at a time runs it). An idle pass reads
-- the first entry of two small indexes, relay.inbox's and events_unsequenced_idx (rows of
-- notify-mode triggers, around a switch), and writes nothing. A pass that finds committed
-- events waiting sequences them and wakes every relay process with one NOTIFY relay_wake,
-- delivered at this commit, once their positions are visible.
CREATE FUNCTION relay.poll_events(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM relay.inbox ORDER BY id LIMIT 1)
       AND NOT EXISTS (SELECT 1 FROM relay.events WHERE position IS NULL ORDER BY id LIMIT 1) THEN
        RETURN 0;
    END IF;
    v_count := relay.sequence_events(max_rows);
    IF v_count > 0 THEN
        PERFORM pg_notify('relay_wake', v_count::text);
    END IF;
    RETURN v_count;
END;
$$;
