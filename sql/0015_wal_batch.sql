-- Wal mode records a pass's changes with one INSERT instead of a function call per change.
--
-- 0012 ran each decoded change through its source's wal function: a PL/pgSQL call and an
-- INSERT statement per change (executor set-up, the payload built), some 130 µs of the
-- server's CPU per change measured on the bench (bench/capture.py), on the cores the
-- application's writers need. Now relay.wal_insert(), generated from the sources like
-- 0012's dispatcher, records every change of a pass in one INSERT ... SELECT, in commit
-- order: each source's changes rebuilt as rows of its table (the row literal cast to its
-- type, as before) and written as poll mode's compact rows (0014), whose payload the
-- sequencer builds in the same transaction. So the payloads are those of the other modes, by
-- the same code. An UPDATE is an event under the same conditions as in the triggers.

-- One source's part of relay.wal_insert(): a SELECT over the pass's changes (u) of its table,
-- giving each event's commit-order number, LSN, part, channel, tenant, key and args.
CREATE FUNCTION relay.wal_select_sql(s relay.sources)
RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
DECLARE
    v_type    text := s.table_oid::regclass::text;
    v_col     text;
    v_kind    text;
    v_fields  text := '';
    v_watched text := '';
    v_cond    text := '';
    v_prefix  text := '';
    v_insert  text;
    v_update  text;
    v_delete  text := 'NULL';
    v_join    text := '';
BEGIN
    IF s.entity = 'booking' THEN
        -- The booking payload renders id and merchantId as they are: where they are not
        -- strings, triples carrying their JSON replace the text of the key and tenant.
        FOREACH v_col IN ARRAY ARRAY['id', 'merchantId'] LOOP
            IF relay.compact_kind(s.table_oid, v_col) IS DISTINCT FROM 's' THEN
                v_prefix := v_prefix || format(', %L, CASE u.op WHEN ''DELETE'' THEN %s ELSE %s END, NULL',
                    'j:' || v_col, relay.compact_value('j', 'od', v_col), relay.compact_value('j', 'nw', v_col));
            END IF;
        END LOOP;
        v_kind := coalesce(relay.compact_kind(s.table_oid, 'status'), 's');
        v_insert := format('ARRAY[%L, %s, NULL%s]', v_kind || ':status',
                           relay.compact_value(v_kind, 'nw', 'status'), v_prefix);
        v_update := format('ARRAY[%L, %s, NULL, %L, %s, NULL%s]', v_kind || ':oldStatus',
                           relay.compact_value(v_kind, 'od', 'status'), v_kind || ':newStatus',
                           relay.compact_value(v_kind, 'nw', 'status'), v_prefix);
        IF v_prefix <> '' THEN
            v_delete := 'ARRAY[' || substr(v_prefix, 3) || ']';
        END IF;
        v_cond := 'od.status IS DISTINCT FROM nw.status';
    ELSE
        FOREACH v_col IN ARRAY s.fields LOOP
            v_kind := coalesce(relay.compact_kind(s.table_oid, v_col), 'j');
            v_fields := v_fields || format(', %L, %s, NULL', v_kind || ':' || v_col,
                                           relay.compact_value(v_kind, 'nw', v_col));
        END LOOP;
        v_insert := CASE WHEN v_fields = '' THEN 'NULL' ELSE 'ARRAY[' || substr(v_fields, 3) || ']' END;
        IF cardinality(s.watch) > 0 THEN
            FOREACH v_col IN ARRAY s.watch LOOP
                v_kind := coalesce(relay.compact_kind(s.table_oid, v_col), 'j');
                v_cond := v_cond || format(' OR od.%1$I IS DISTINCT FROM nw.%1$I', v_col);
                v_watched := v_watched || format(
                    ', CASE WHEN od.%1$I IS DISTINCT FROM nw.%1$I THEN %2$L END, %3$s, %4$s',
                    v_col, 'c' || v_kind || ':' || v_col, relay.compact_value(v_kind, 'od', v_col),
                    relay.compact_value(v_kind, 'nw', v_col));
            END LOOP;
            v_cond := substr(v_cond, 5);
            v_update := 'ARRAY[' || substr(v_watched || v_fields, 3) || ']';
        ELSE
            -- Any column: the rows compared as jsonb, as the trigger compares them; the
            -- changes go in as a JSON field before the --fields ones (which win a clash, as
            -- in the trigger's payload).
            v_join := $j$
    CROSS JOIN LATERAL (SELECT CASE WHEN u.op = 'UPDATE' THEN (
        SELECT coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)), '{}')
        FROM jsonb_each(to_jsonb(nw)) n JOIN jsonb_each(to_jsonb(od)) o USING (key)
        WHERE n.value IS DISTINCT FROM o.value) END AS changes) c$j$;
            v_cond := 'c.changes <> ''{}''';
            v_update := format('ARRAY[''j:changes'', c.changes::text, NULL%s]', v_fields);
        END IF;
    END IF;
    RETURN format($s$
    SELECT u.n, u.lsn, u.part,
           CASE u.op WHEN 'INSERT' THEN %1$L WHEN 'UPDATE' THEN %2$L ELSE %3$L END,
           CASE u.op WHEN 'DELETE' THEN od.%4$I::text ELSE nw.%4$I::text END,
           CASE u.op WHEN 'DELETE' THEN od.%5$I::text ELSE nw.%5$I::text END,
           CASE u.op WHEN 'INSERT' THEN %6$s WHEN 'UPDATE' THEN %7$s ELSE %8$s END
    FROM u
    CROSS JOIN LATERAL (SELECT u.new::%9$s AS r, u.old::%9$s AS r_old OFFSET 0) rows
    CROSS JOIN LATERAL (SELECT (rows.r).*) nw
    CROSS JOIN LATERAL (SELECT (rows.r_old).*) od%10$s
    WHERE u.relid = %11$s AND (u.op <> 'UPDATE' OR %12$s)$s$,
        s.entity || '_created', s.entity || '_updated', s.entity || '_deleted',
        s.tenant_column, s.key_column, v_insert, v_update, v_delete, v_type, v_join,
        s.table_oid::oid, v_cond);
END;
$gen$;

-- relay.wal_insert(): the changes of a pass not yet recorded, every source's, as
-- relay.events rows in one statement, in commit order: ids, positions and payloads given at
-- once (the row is written once, not written then updated by the sequencer). It holds the
-- sequencer's lock and sequences first whatever waits unsequenced (rows of triggers, around
-- a switch), so positions stay in commit order. Returns how many events it sequenced.
-- Rewritten with 0012's dispatcher (at every attach, detach and install), so its plan is
-- cached.
CREATE FUNCTION relay.install_wal_insert()
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_selects text;
BEGIN
    SELECT string_agg(relay.wal_select_sql(s), E'\n    UNION ALL' ORDER BY s.entity)
    INTO v_selects FROM relay.sources s WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = s.table_oid);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay.wal_insert(p_relids oid[], p_ops text[], p_new text[], '
                   'p_old text[], p_lsns pg_lsn[], p_parts integer[]) RETURNS bigint LANGUAGE plpgsql AS %L',
                   CASE WHEN v_selects IS NULL THEN E'\nBEGIN\n    RETURN 0;\nEND;\n' ELSE format($f$
DECLARE
    v_base    bigint;
    v_pending bigint := 0;
    v_count   bigint;
BEGIN
    SET LOCAL synchronous_commit = off;  -- as the sequencer's: the changes are in the slot until it moves on
    PERFORM pg_advisory_xact_lock(hashtext('relay.sequencer'));
    LOOP
        v_count := relay.sequence_events(10000);
        v_pending := v_pending + v_count;
        EXIT WHEN v_count < 10000;
    END LOOP;
    SELECT greatest(last_position, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    INTO v_base FROM relay.sequencer;
    WITH u AS (
        SELECT u.* FROM unnest(p_relids, p_ops, p_new, p_old, p_lsns, p_parts) WITH ORDINALITY
                        AS u(relid, op, new, old, lsn, part, n)
        WHERE NOT EXISTS (SELECT 1 FROM relay.events e WHERE e.wal_lsn = u.lsn AND e.wal_part = u.part)
    ), ordered AS (
        SELECT b.* FROM (%s
        ) AS b (n, lsn, part, channel, merchant, key, args)
        ORDER BY b.n
        OFFSET 0
    ), numbered AS (
        SELECT nextval('relay.events_id_seq') AS id, o.* FROM ordered o
    )
    INSERT INTO relay.events (id, wal_lsn, wal_part, channel, merchant_id, booking_id, payload, position)
    SELECT x.id, x.lsn, x.part, x.channel, x.merchant, x.key,
           relay.event_payload(x.channel, x.merchant, x.key, x.args, x.id),
           v_base + row_number() OVER (ORDER BY x.id)
    FROM numbered x;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE relay.sequencer SET last_position = v_base + v_count;
    END IF;
    RETURN v_pending + v_count;
END;
$f$, v_selects) END);
END;
$$;

-- 0012's dispatcher installer, which now writes relay.wal_insert() too.
CREATE OR REPLACE FUNCTION relay.install_wal_dispatch()
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_cases text;
BEGIN
    SELECT string_agg(format(E'\n    WHEN %s::oid THEN RETURN relay.%I(tg_op, p_new, p_old, p_lsn, p_part);',
                             table_oid::oid, 'wal_' || entity), '' ORDER BY entity)
    INTO v_cases FROM relay.sources;
    EXECUTE format('CREATE OR REPLACE FUNCTION relay.wal_change(p_relid oid, tg_op text, p_new text, '
                   'p_old text, p_lsn pg_lsn, p_part integer) RETURNS boolean LANGUAGE plpgsql AS %L',
                   CASE WHEN v_cases IS NULL THEN E'\nBEGIN\n    RETURN NULL;\nEND;\n'
                        ELSE format(E'\nBEGIN\n    CASE p_relid%s\n    ELSE RETURN NULL;\n    END CASE;\nEND;\n',
                                    v_cases) END);
    PERFORM relay.install_wal_insert();
END;
$$;

-- The wal reader's pass, in its one transaction: every decoded change not yet recorded,
-- sequenced, in one statement, and one NOTIFY relay_wake for the batch (delivered at this
-- commit, once the positions are visible).
CREATE OR REPLACE FUNCTION relay.wal_record(p_relids oid[], p_ops text[], p_new text[], p_old text[],
                                            p_lsns pg_lsn[], p_parts integer[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    v_count := relay.wal_insert(p_relids, p_ops, p_new, p_old, p_lsns, p_parts);
    IF v_count > 0 THEN
        PERFORM pg_notify('relay_wake', v_count::text);
    END IF;
    RETURN v_count;
END;
$$;

SELECT relay.install_wal_dispatch();
