-- Poll mode writes the durable row in relay.events, as DESIGN.md's first guarantee says
-- ("a row in relay.events in the same transaction"), instead of 0009's relay.inbox. Measured
-- side by side (pgbench, paired rounds), the inbox saved nothing: a fresh relay.events row
-- touches two index entries (the primary key and the small unsequenced index) against the
-- inbox's one, within the rounds' noise at 1 and at 8 writers. So a poll-mode row is the
-- notify-mode row, the same columns and the same payload (eventId included), without the
-- NOTIFY; the poller sequences it as the feed does in notify mode.
--
-- relay.inbox stays, drained by the sequencer (0009's), and is no longer written: a writer
-- blocked behind this migration still finds it, and no application write fails for it.

CREATE OR REPLACE FUNCTION relay.booking_function_sql(p_mode text)
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
DECLARE
    v_id bigint := nextval('relay.events_id_seq');
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, 'booking_created', NEW."merchantId", NEW.id,
                jsonb_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                   'status', NEW.status, 'operation', 'INSERT', 'eventId', v_id));
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status IS DISTINCT FROM NEW.status THEN
            INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
            VALUES (v_id, 'booking_updated', NEW."merchantId", NEW.id,
                    jsonb_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
                                       'oldStatus', OLD.status, 'newStatus', NEW.status,
                                       'operation', 'UPDATE', 'eventId', v_id));
        END IF;
    ELSE
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, 'booking_deleted', OLD."merchantId", OLD.id,
                jsonb_build_object('id', OLD.id, 'merchantId', OLD."merchantId", 'operation', 'DELETE',
                                   'eventId', v_id));
    END IF;
    RETURN NULL;
END;
$b$;
    END IF;
    RETURN format('CREATE OR REPLACE FUNCTION relay.notify_booking_changes() RETURNS trigger '
                  'LANGUAGE plpgsql AS %L', v_body);
END;
$gen$;

CREATE OR REPLACE FUNCTION relay.source_function_sql(s relay.sources, p_mode text)
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
    v_id       bigint := nextval('relay.events_id_seq');
    v_changes  jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, %1$L, NEW.%4$I::text, NEW.%5$I::text,
                jsonb_build_object('id', NEW.%5$I::text, 'merchantId', NEW.%4$I::text,
                                   'operation', 'INSERT', 'eventId', v_id%6$s));
    ELSIF TG_OP = 'UPDATE' THEN%7$s
        IF v_changes = '{}' THEN
            RETURN NULL;
        END IF;
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, %2$L, NEW.%4$I::text, NEW.%5$I::text,
                jsonb_build_object('id', NEW.%5$I::text, 'merchantId', NEW.%4$I::text,
                                   'operation', 'UPDATE', 'eventId', v_id, 'changes', v_changes%6$s));
    ELSE
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, %3$L, OLD.%4$I::text, OLD.%5$I::text,
                jsonb_build_object('id', OLD.%5$I::text, 'merchantId', OLD.%4$I::text,
                                   'operation', 'DELETE', 'eventId', v_id));
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

-- Rewrite every source's trigger function for the current mode.
DO $$
DECLARE
    s relay.sources;
BEGIN
    FOR s IN SELECT * FROM relay.sources ORDER BY entity LOOP
        EXECUTE relay.capture_function_sql(s, (SELECT mode FROM relay.capture));
    END LOOP;
END;
$$;
