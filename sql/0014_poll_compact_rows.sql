-- Poll mode writes a compact durable row and the sequencer builds its payload.
--
-- In poll mode nothing but the relay reads an event before the sequencer has given it its
-- position (every reader pages by position), so the payload need not exist before then.
-- Measured per row (bench/capture.py, trigger parts): building the jsonb payload and its
-- eventId in the writer's transaction was most of what separated poll mode's trigger from a
-- bare relay.events row. So a poll-mode trigger now writes the row with the values the
-- payload needs, as text (args), and no payload; the sequencer, off the writer's path, builds
-- the payload in the same UPDATE that gives the row its position (relay.event_payload), so
-- every reader sees exactly the payload notify mode writes. The row is still written in the
-- writer's transaction, in relay.events (DESIGN.md's first guarantee).
--
-- args holds triples (tag, a, b):
--   's:NAME', v, NULL   the key NAME with the string v (to_jsonb of the text)
--   'j:NAME', v, NULL   the key NAME with the JSON text v (to_jsonb of the value, as text)
--   'cs:NAME', o, n     and 'cj:NAME', o, n: a watched column NAME that changed, old and new
--                       value, as above; they make the payload's "changes" object
-- A value is written as plain text only where that renders exactly as to_jsonb renders the
-- value itself, whatever the session's settings: text, varchar, name, uuid and enum
-- columns. Any other column's value is written as its to_jsonb text. The id, merchantId and
-- operation keys come from the row's booking_id, merchant_id and channel columns, eventId
-- from its id. An UPDATE of an attached source without --watch (any column) still builds
-- its whole payload in the trigger: it compares the rows as jsonb anyway.
--
-- Rows written before (payload set) keep their payload; a writer blocked behind this
-- migration, still running 0013's function, writes such a row. Wal mode's functions take
-- the bodies 0013 gave poll mode (the generators' 'wal' mode), unchanged.

ALTER TABLE relay.events ALTER COLUMN payload DROP NOT NULL, ADD COLUMN args text[];

-- How a value of p_table's column p_column goes into args: 's' (its text) or 'j' (its
-- to_jsonb text). NULL for a column that does not exist.
CREATE FUNCTION relay.compact_kind(p_table regclass, p_column text)
RETURNS text
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN t.oid IN ('text'::regtype, 'varchar'::regtype, 'name'::regtype, 'uuid'::regtype)
                 OR t.typtype = 'e' THEN 's' ELSE 'j' END
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = p_table AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- A column's value (of the row NEW or OLD) as args holds it.
CREATE FUNCTION relay.compact_value(p_kind text, p_row text, p_column text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT CASE p_kind WHEN 's' THEN format('%s.%I::text', p_row, p_column)
                   ELSE format('to_jsonb(%s.%I)::text', p_row, p_column) END
$$;

-- The payload of a row written compact: what notify mode's trigger writes for it. Any
-- layout, a triple at a time.
CREATE FUNCTION relay.event_payload_any(p_channel text, p_merchant text, p_key text, p_args text[],
                                        p_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_payload jsonb := jsonb_build_object('id', p_key, 'merchantId', p_merchant,
        'operation', CASE right(p_channel, 8) WHEN '_created' THEN 'INSERT'
                                              WHEN '_updated' THEN 'UPDATE' ELSE 'DELETE' END,
        'eventId', p_id);
    v_changes jsonb;
    v_fields  jsonb := '{}';
    v_tag     text;
    i         integer := 1;
BEGIN
    WHILE i < coalesce(cardinality(p_args), 0) LOOP
        v_tag := p_args[i];
        IF left(v_tag, 2) = 's:' THEN
            v_fields := v_fields || jsonb_build_object(substr(v_tag, 3), p_args[i + 1]);
        ELSIF left(v_tag, 2) = 'j:' THEN
            v_fields := v_fields || jsonb_build_object(substr(v_tag, 3), p_args[i + 1]::jsonb);
        ELSIF left(v_tag, 3) = 'cs:' THEN
            v_changes := coalesce(v_changes, '{}') || jsonb_build_object(substr(v_tag, 4),
                jsonb_build_object('old', p_args[i + 1], 'new', p_args[i + 2]));
        ELSIF left(v_tag, 3) = 'cj:' THEN
            v_changes := coalesce(v_changes, '{}') || jsonb_build_object(substr(v_tag, 4),
                jsonb_build_object('old', p_args[i + 1]::jsonb, 'new', p_args[i + 2]::jsonb));
        END IF;  -- NULL: a watched column that did not change
        i := i + 3;
    END LOOP;
    IF v_changes IS NOT NULL THEN
        v_payload := v_payload || jsonb_build_object('changes', v_changes);
    END IF;
    RETURN v_payload || v_fields;  -- a field named like a key above wins, as in notify mode
END;
$$;

-- The same, with the layouts of the booking source (and of attached sources with one or two
-- string fields) as one expression: the sequencer's UPDATE inlines it, and the payload costs
-- it what it cost the trigger (a jsonb_build_object; the general function several times that).
CREATE FUNCTION relay.event_payload(p_channel text, p_merchant text, p_key text, p_args text[],
                                    p_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
SELECT CASE
    WHEN p_args IS NULL THEN
        jsonb_build_object('id', p_key, 'merchantId', p_merchant,
            'operation', CASE right(p_channel, 8) WHEN '_created' THEN 'INSERT'
                                                  WHEN '_updated' THEN 'UPDATE' ELSE 'DELETE' END,
            'eventId', p_id)
    WHEN cardinality(p_args) = 3 AND left(p_args[1], 2) = 's:' THEN
        jsonb_build_object('id', p_key, 'merchantId', p_merchant,
            'operation', CASE right(p_channel, 8) WHEN '_created' THEN 'INSERT'
                                                  WHEN '_updated' THEN 'UPDATE' ELSE 'DELETE' END,
            'eventId', p_id, substr(p_args[1], 3), p_args[2])
    WHEN cardinality(p_args) = 6 AND left(p_args[1], 2) = 's:' AND left(p_args[4], 2) = 's:' THEN
        jsonb_build_object('id', p_key, 'merchantId', p_merchant,
            'operation', CASE right(p_channel, 8) WHEN '_created' THEN 'INSERT'
                                                  WHEN '_updated' THEN 'UPDATE' ELSE 'DELETE' END,
            'eventId', p_id, substr(p_args[1], 3), p_args[2], substr(p_args[4], 3), p_args[5])
    ELSE relay.event_payload_any(p_channel, p_merchant, p_key, p_args, p_id)
END
$$;

-- One source's compact poll-mode trigger function, as a CREATE OR REPLACE FUNCTION
-- statement; NULL for the booking source when its id or merchantId column is not of a
-- string type (the payload renders them as they are: the full body serves then).
CREATE FUNCTION relay.compact_function_sql(s relay.sources)
RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
DECLARE
    v_col     text;
    v_kind    text;
    v_fields  text := '';
    v_watched text := '';
    v_cond    text := '';
    v_update  text;
    v_body    text;
BEGIN
    IF s.entity = 'booking' THEN
        IF relay.compact_kind(s.table_oid, 'id') IS DISTINCT FROM 's'
           OR relay.compact_kind(s.table_oid, 'merchantId') IS DISTINCT FROM 's' THEN
            RETURN NULL;
        END IF;
        v_kind := coalesce(relay.compact_kind(s.table_oid, 'status'), 's');
        v_body := format($b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.events (channel, merchant_id, booking_id, args)
        VALUES ('booking_created', NEW."merchantId", NEW.id, ARRAY[%1$L, %3$s, NULL]);
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status IS DISTINCT FROM NEW.status THEN
            INSERT INTO relay.events (channel, merchant_id, booking_id, args)
            VALUES ('booking_updated', NEW."merchantId", NEW.id,
                    ARRAY[%2$L, %4$s, NULL, %5$L, %3$s, NULL]);
        END IF;
    ELSE
        INSERT INTO relay.events (channel, merchant_id, booking_id)
        VALUES ('booking_deleted', OLD."merchantId", OLD.id);
    END IF;
    RETURN NULL;
END;
$b$, v_kind || ':status', v_kind || ':oldStatus', relay.compact_value(v_kind, 'NEW', 'status'),
     relay.compact_value(v_kind, 'OLD', 'status'), v_kind || ':newStatus');
        RETURN format('CREATE OR REPLACE FUNCTION relay.notify_booking_changes() RETURNS trigger '
                      'LANGUAGE plpgsql AS %L', v_body);
    END IF;

    FOREACH v_col IN ARRAY s.fields LOOP
        v_kind := coalesce(relay.compact_kind(s.table_oid, v_col), 'j');
        v_fields := v_fields || format(', %L, %s, NULL', v_kind || ':' || v_col,
                                       relay.compact_value(v_kind, 'NEW', v_col));
    END LOOP;
    IF cardinality(s.watch) > 0 THEN
        FOREACH v_col IN ARRAY s.watch LOOP
            v_kind := coalesce(relay.compact_kind(s.table_oid, v_col), 'j');
            v_cond := v_cond || format(' OR OLD.%1$I IS DISTINCT FROM NEW.%1$I', v_col);
            v_watched := v_watched || format(', CASE WHEN OLD.%1$I IS DISTINCT FROM NEW.%1$I THEN %2$L END, %3$s, %4$s',
                                             v_col, 'c' || v_kind || ':' || v_col,
                                             relay.compact_value(v_kind, 'OLD', v_col),
                                             relay.compact_value(v_kind, 'NEW', v_col));
        END LOOP;
        v_update := format($u$
        IF NOT (%1$s) THEN
            RETURN NULL;
        END IF;
        INSERT INTO relay.events (channel, merchant_id, booking_id, args)
        VALUES (%2$L, NEW.%3$I::text, NEW.%4$I::text, ARRAY[%5$s]);$u$,
            substr(v_cond, 5), s.entity || '_updated', s.tenant_column, s.key_column,
            substr(v_watched || v_fields, 3));
    ELSE
        -- Without --watch the trigger compares the rows as jsonb: it writes the payload whole.
        v_update := format($u$
        SELECT coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)), '{}')
        INTO v_changes FROM jsonb_each(to_jsonb(NEW)) n JOIN jsonb_each(to_jsonb(OLD)) o USING (key)
        WHERE n.value IS DISTINCT FROM o.value;
        IF v_changes = '{}' THEN
            RETURN NULL;
        END IF;
        v_id := nextval('relay.events_id_seq');
        INSERT INTO relay.events (id, channel, merchant_id, booking_id, payload)
        VALUES (v_id, %1$L, NEW.%2$I::text, NEW.%3$I::text,
                jsonb_build_object('id', NEW.%3$I::text, 'merchantId', NEW.%2$I::text,
                                   'operation', 'UPDATE', 'eventId', v_id, 'changes', v_changes%4$s));$u$,
            s.entity || '_updated', s.tenant_column, s.key_column,
            (SELECT coalesce(string_agg(format(', %L, NEW.%I', f, f), '' ORDER BY n), '')
             FROM unnest(s.fields) WITH ORDINALITY AS u(f, n)));
    END IF;
    v_body := format($f$
DECLARE
    v_id      bigint;
    v_changes jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO relay.events (channel, merchant_id, booking_id, args)
        VALUES (%1$L, NEW.%3$I::text, NEW.%4$I::text, %5$s);
    ELSIF TG_OP = 'UPDATE' THEN%6$s
    ELSE
        INSERT INTO relay.events (channel, merchant_id, booking_id)
        VALUES (%2$L, OLD.%3$I::text, OLD.%4$I::text);
    END IF;
    RETURN NULL;
END;
$f$, s.entity || '_created', s.entity || '_deleted', s.tenant_column, s.key_column,
     CASE WHEN v_fields = '' THEN 'NULL' ELSE 'ARRAY[' || substr(v_fields, 3) || ']' END, v_update);
    RETURN format('CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger LANGUAGE plpgsql AS %L',
                  'source_' || s.entity, v_body);
END;
$gen$;

-- One source's trigger function in a mode: in poll mode the compact one (where it serves),
-- otherwise 0013's. The 'wal' mode of the generators is 0013's poll-mode body, from which
-- wal mode's functions are made.
CREATE OR REPLACE FUNCTION relay.capture_function_sql(s relay.sources, p_mode text)
RETURNS text
LANGUAGE sql STABLE AS $$
SELECT coalesce(CASE WHEN p_mode = 'poll' THEN relay.compact_function_sql(s) END,
                CASE WHEN s.entity = 'booking' THEN relay.booking_function_sql(p_mode)
                     ELSE relay.source_function_sql(s, p_mode) END)
$$;

-- 0012's, from the generators' 'wal' mode (0013's poll-mode bodies): the same functions as before.
CREATE OR REPLACE FUNCTION relay.wal_function_sql(s relay.sources)
RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
DECLARE
    v_create text := relay.capture_function_sql(s, 'wal');
    v_marker text := ' LANGUAGE plpgsql AS ';
    v_body   text;
    v_type   text := s.table_oid::regclass::text;
BEGIN
    EXECUTE 'SELECT ' || substr(v_create, strpos(v_create, v_marker) + length(v_marker)) INTO v_body;
    v_body := regexp_replace(v_body, '^\s*DECLARE', '');
    v_body := regexp_replace(v_body,
        'INSERT INTO relay\.events \(id, channel, merchant_id, booking_id, payload\)(\s+)VALUES \(',
        'INSERT INTO relay.events (wal_lsn, wal_part, id, channel, merchant_id, booking_id, payload)'
        '\1VALUES (p_lsn, p_part, ',
        'g');
    IF array_length(regexp_split_to_array(v_body, 'VALUES \(p_lsn, p_part, '), 1) <> 4 THEN
        RAISE EXCEPTION 'relay.wal_function_sql: the poll-mode body of % changed shape', s.entity;
    END IF;
    RETURN format('CREATE OR REPLACE FUNCTION relay.%I(tg_op text, p_new text, p_old text, '
                  'p_lsn pg_lsn, p_part integer) RETURNS boolean LANGUAGE plpgsql AS %L',
                  'wal_' || s.entity,
                  format(E'\nDECLARE\n    new %1$s := p_new::%1$s;\n    old %1$s := p_old::%1$s;', v_type)
                  || v_body);
END;
$gen$;

-- 0009's sequencer, which now also builds the payload of a compact row in the UPDATE that
-- gives it its position (and drops its args): a row is never visible to a reader without
-- its payload.
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
        UPDATE relay.events e
        SET position = b.position,
            payload = coalesce(e.payload, relay.event_payload(e.channel, e.merchant_id, e.booking_id, e.args, e.id)),
            args = NULL
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

-- Rewrite every source's trigger function for the current mode (in wal mode they are not in
-- use, and its wal functions are unchanged).
DO $$
DECLARE
    s relay.sources;
BEGIN
    IF (SELECT mode FROM relay.capture) <> 'wal' THEN
        FOR s IN SELECT * FROM relay.sources ORDER BY entity LOOP
            EXECUTE relay.capture_function_sql(s, (SELECT mode FROM relay.capture));
        END LOOP;
    END IF;
END;
$$;
