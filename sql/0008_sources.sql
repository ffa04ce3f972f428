-- Sources: any table whose row changes become events, not only "Booking".
--
-- Every relay process reads the same sources from relay.sources. Each attached table gets
-- a trigger function of its own, generated here, in the database, with every identifier
-- quoted by format('%I') and the whole function text quoted by format('%L'): nothing the
-- user typed is ever formatted unquoted into SQL. Every change sends NOTIFY relay_sources,
-- so running relay processes LISTEN to the new channels at once.

CREATE TABLE relay.sources (
    entity        text     PRIMARY KEY CHECK (entity ~ '^[a-z][a-z0-9_]{0,29}$'),
    table_oid     regclass NOT NULL UNIQUE,  -- regclass: pg_dump writes it as a name
    table_name    text     NOT NULL,         -- as the user wrote it, for `relay sources`
    tenant_column text     NOT NULL,
    key_column    text     NOT NULL,
    watch         text[]   NOT NULL DEFAULT '{}',
    fields        text[]   NOT NULL DEFAULT '{}',
    attached_at   timestamptz NOT NULL DEFAULT now()
);

-- The text of one attached source's trigger function: the booking function's shape
-- (one durable row, one NOTIFY within the 8000-byte limit) with the contract's generic
-- payloads. Watched columns are compared one by one; without --watch every column is.
CREATE FUNCTION relay.source_function_sql(s relay.sources)
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
    RETURN format('CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger LANGUAGE plpgsql AS %L',
                  'source_' || s.entity, v_body);
END;
$gen$;

-- A table named as the user wrote it: `schema.table` (each part taken exactly, quoted),
-- else the whole text as one quoted name on the search_path.
CREATE FUNCTION relay.resolve_table(p_table text)
RETURNS regclass
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN coalesce(p_table, '') <> '' THEN coalesce(
    CASE WHEN strpos(p_table, '.') BETWEEN 2 AND length(p_table) - 1 THEN
        to_regclass(quote_ident(split_part(p_table, '.', 1)) || '.'
                    || quote_ident(substr(p_table, strpos(p_table, '.') + 1)))
    END,
    to_regclass(quote_ident(p_table)))
END
$$;

-- (Re)write one source's trigger. The built-in booking source keeps the seed's trigger
-- name (replacing a seed trigger already in place) and relay.notify_booking_changes().
CREATE FUNCTION relay.install_source(p_entity text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s         relay.sources;
    v_trigger text;
    v_function text;
BEGIN
    SELECT * INTO STRICT s FROM relay.sources WHERE entity = p_entity;
    IF s.entity = 'booking' THEN
        v_trigger := 'booking_changes_trigger';
        v_function := 'notify_booking_changes';
    ELSE
        v_trigger := 'relay_' || s.entity || '_changes';
        v_function := 'source_' || s.entity;
        EXECUTE relay.source_function_sql(s);
    END IF;
    -- table_oid::text is the table's name, schema-qualified and quoted where needed.
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = s.table_oid AND tgname = v_trigger) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, s.table_oid);
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION relay.%I()', v_trigger, s.table_oid, v_function);
END;
$$;

-- `relay migrate`: the built-in source, "Booking" (which must exist).
CREATE FUNCTION relay.attach_booking()
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    INSERT INTO relay.sources (entity, table_oid, table_name, tenant_column, key_column, watch, fields)
    VALUES ('booking', '"Booking"'::regclass, 'Booking', 'merchantId', 'id', '{status}', '{status}')
    ON CONFLICT (entity) DO UPDATE SET table_oid = EXCLUDED.table_oid;
    PERFORM relay.install_source('booking');
    PERFORM pg_notify('relay_sources', 'booking');
END;
$$;

-- `relay attach`: check, record, install. Refusals raise SQLSTATE 22023 with a one-line
-- message meant for the person who typed the command. Attaching again replaces the options.
CREATE FUNCTION relay.attach_source(p_table text, p_entity text, p_tenant text, p_key text,
                                    p_watch text[], p_fields text[])
RETURNS relay.sources
LANGUAGE plpgsql AS $$
DECLARE
    v_oid   regclass;
    v_kind  "char";
    v_col   text;
    v_row   relay.sources;
    v_taken relay.sources;
BEGIN
    -- One attach or detach at a time: two runs at once end as if run one after the other.
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    p_watch := coalesce(p_watch, '{}');
    p_fields := coalesce(p_fields, '{}');
    IF p_entity IS NULL OR p_entity !~ '^[a-z][a-z0-9_]{0,29}$' THEN
        RAISE EXCEPTION 'invalid entity name %: use 1 to 30 of a-z, 0-9 and _, starting with a letter',
            quote_literal(coalesce(p_entity, '')) USING ERRCODE = '22023';
    END IF;
    IF p_entity = 'booking' THEN
        RAISE EXCEPTION 'entity name ''booking'' is taken by the built-in source "Booking"'
            USING ERRCODE = '22023';
    END IF;
    v_oid := relay.resolve_table(p_table);
    IF v_oid IS NULL THEN
        RAISE EXCEPTION 'table % does not exist (names are case-sensitive; search_path: %)',
            quote_literal(coalesce(p_table, '')), current_setting('search_path') USING ERRCODE = '22023';
    END IF;
    SELECT relkind INTO v_kind FROM pg_class WHERE oid = v_oid;
    IF v_oid = (SELECT table_oid FROM relay.sources WHERE entity = 'booking') THEN
        RAISE EXCEPTION '% is the built-in source ''booking'' (`relay migrate` attaches it)',
            quote_literal(p_table) USING ERRCODE = '22023';
    END IF;
    IF v_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is a %, not a table', quote_literal(p_table),
            CASE v_kind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                        WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index'
                        WHEN 'I' THEN 'index' WHEN 'c' THEN 'composite type' WHEN 't' THEN 'TOAST table'
                        ELSE 'relation of kind ' || v_kind::text END
            USING ERRCODE = '22023';
    END IF;
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = v_oid)
       IN ('relay', 'pg_catalog', 'information_schema', 'pg_toast') THEN
        RAISE EXCEPTION '% is in schema %, whose tables cannot be sources', quote_literal(p_table),
            (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = v_oid) USING ERRCODE = '22023';
    END IF;
    -- A source whose table was dropped (or dropped and created again) is attached anew.
    DELETE FROM relay.sources WHERE entity = p_entity
        AND NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = table_oid);
    SELECT * INTO v_taken FROM relay.sources WHERE table_oid = v_oid AND entity <> p_entity;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is already attached as %: detach it first', quote_literal(p_table),
            quote_literal(v_taken.entity) USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_taken FROM relay.sources WHERE entity = p_entity AND table_oid <> v_oid;
    IF FOUND THEN
        RAISE EXCEPTION 'entity name % is taken by table %', quote_literal(p_entity),
            quote_literal(v_taken.table_name) USING ERRCODE = '22023';
    END IF;
    FOREACH v_col IN ARRAY ARRAY[p_tenant, p_key] || p_watch || p_fields LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = v_oid AND attname = v_col
                       AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'table % has no column %', quote_literal(p_table),
                quote_literal(coalesce(v_col, '')) USING ERRCODE = '22023';
        END IF;
    END LOOP;
    FOREACH v_col IN ARRAY p_fields LOOP
        IF v_col IN ('id', 'merchantId', 'operation', 'eventId', 'changes', 'truncated') THEN
            RAISE EXCEPTION 'field % would overwrite the payload key of the same name', quote_literal(v_col)
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF cardinality(p_fields) > 40 THEN  -- json_build_object takes at most 100 arguments
        RAISE EXCEPTION 'at most 40 fields' USING ERRCODE = '22023';
    END IF;
    INSERT INTO relay.sources (entity, table_oid, table_name, tenant_column, key_column, watch, fields)
    VALUES (p_entity, v_oid, p_table, p_tenant, p_key,
            ARRAY(SELECT DISTINCT unnest(p_watch) ORDER BY 1), p_fields)
    ON CONFLICT (entity) DO UPDATE SET table_name = EXCLUDED.table_name,
        tenant_column = EXCLUDED.tenant_column, key_column = EXCLUDED.key_column,
        watch = EXCLUDED.watch, fields = EXCLUDED.fields
    RETURNING * INTO v_row;
    PERFORM relay.install_source(p_entity);
    PERFORM pg_notify('relay_sources', p_entity);
    RETURN v_row;
END;
$$;

-- `relay detach`: the trigger and its function go; events already recorded stay and are
-- delivered.
CREATE FUNCTION relay.detach_source(p_table text)
RETURNS relay.sources
LANGUAGE plpgsql AS $$
DECLARE
    s relay.sources;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    SELECT * INTO s FROM relay.sources
    WHERE table_name = p_table OR table_oid = relay.resolve_table(p_table)
    ORDER BY table_name = p_table DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached (see `relay sources`)', quote_literal(coalesce(p_table, ''))
            USING ERRCODE = '22023';
    END IF;
    IF s.entity = 'booking' THEN
        RAISE EXCEPTION 'the built-in source "Booking" cannot be detached' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = s.table_oid  -- gone if the table was dropped
               AND tgname = 'relay_' || s.entity || '_changes') THEN
        EXECUTE format('DROP TRIGGER %I ON %s', 'relay_' || s.entity || '_changes', s.table_oid);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I()', 'source_' || s.entity);
    DELETE FROM relay.sources WHERE entity = s.entity;
    PERFORM pg_notify('relay_sources', s.entity);
    RETURN s;
END;
$$;
