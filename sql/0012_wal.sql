-- Capture mode wal (DESIGN.md "Capture modes"): no trigger at all. The sources' tables, and
-- only them, are in the publication relay; the logical replication slot relay (pgoutput)
-- keeps their changes in the WAL until one relay process at a time (relay/wal.py) has
-- recorded them as relay.events rows.
--
-- The payloads are built by PostgreSQL with the very SQL of the poll-mode trigger function:
-- each source also has a wal function, relay.wal_<entity>(), whose body is the poll-mode
-- body taken from the generator (when a source is installed, so after every migration),
-- run on NEW and OLD rows rebuilt from the decoded text values (a row literal cast to the
-- table's type: every column goes through its type's input function, as the values came
-- out of its output function). It writes the same relay.events row, plus the change's LSN;
-- the sequencer gives it its position, as in poll mode. A change already recorded (the
-- relay process died after its commit but before the slot moved on) is skipped, and the
-- unique (wal_lsn, wal_part) guarantees it: wal_part numbers the changes of one WAL record
-- (COPY writes several rows in one).

ALTER TABLE relay.events ADD COLUMN wal_lsn pg_lsn, ADD COLUMN wal_part integer;
CREATE UNIQUE INDEX events_wal_idx ON relay.events (wal_lsn, wal_part) WHERE wal_lsn IS NOT NULL;

-- The replica identity a source's table had before wal mode made it FULL (NULL: Relay did
-- not change it), as the clause that restores it.
ALTER TABLE relay.sources ADD COLUMN prior_identity text;

-- Why this database and role cannot use wal mode, in one line; NULL when they can.
CREATE FUNCTION relay.wal_refusal()
RETURNS text
LANGUAGE sql STABLE AS $$
SELECT CASE
    WHEN current_setting('wal_level') <> 'logical' THEN
        format('capture mode wal needs wal_level = logical (the server has %s): set it in '
               'postgresql.conf and restart PostgreSQL', current_setting('wal_level'))
    WHEN NOT (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) THEN
        format('capture mode wal needs the REPLICATION attribute for role %s: '
               'ALTER ROLE %s REPLICATION', current_user, quote_ident(current_user))
    WHEN EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'relay'
                 AND database IS DISTINCT FROM current_database()) THEN
        format('the replication slot relay belongs to database %s: drop it there first',
               (SELECT coalesce(database, 'none (a physical slot)') FROM pg_replication_slots
                WHERE slot_name = 'relay'))
END
$$;

-- The publication, empty, before the slot exists: a slot's decoding cannot see a publication
-- created after the point it started from. A partitioned source's changes are published as
-- its own (not its partitions'), as its trigger saw them.
CREATE FUNCTION relay.wal_publication()
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'relay') THEN
        CREATE PUBLICATION relay WITH (publish_via_partition_root = true);
    END IF;
END;
$$;

-- One source's wal function: the poll-mode trigger function's body (the literal its
-- generator quoted, evaluated), with NEW and OLD declared from text and the LSN written
-- into the relay.events row. Text parameters, not the table's type: a function taking the
-- table's type would stop the application from dropping its table.
CREATE FUNCTION relay.wal_function_sql(s relay.sources)
RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
DECLARE
    v_create text := relay.capture_function_sql(s, 'poll');
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

-- relay.wal_change(): each decoded change to its source's wal function, by table oid
-- (a change of a table that is no longer a source is dropped). Rewritten at every attach
-- and detach, so every call is a static one with a cached plan.
CREATE FUNCTION relay.install_wal_dispatch()
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
END;
$$;

-- A source's table in the publication, with the replica identity its payloads need: FULL,
-- since every source's UPDATE payload compares old values and its DELETE payload names the
-- old row's tenant, and since an unchanged TOASTed value of an UPDATE is then in the old row.
CREATE FUNCTION relay.publish_source(s relay.sources)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_prior text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'relay' AND r.prrelid = s.table_oid) THEN
        EXECUTE format('ALTER PUBLICATION relay ADD TABLE %s', s.table_oid);
    END IF;
    SELECT CASE c.relreplident WHEN 'd' THEN 'DEFAULT' WHEN 'n' THEN 'NOTHING'
               WHEN 'i' THEN format('USING INDEX %I', (SELECT ic.relname FROM pg_index x
                   JOIN pg_class ic ON ic.oid = x.indexrelid WHERE x.indrelid = c.oid AND x.indisreplident))
           END
    INTO v_prior FROM pg_class c WHERE c.oid = s.table_oid;
    IF v_prior IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', s.table_oid);
        UPDATE relay.sources SET prior_identity = v_prior WHERE entity = s.entity;
    END IF;
END;
$$;

-- The reverse: out of the publication, the replica identity as it was.
CREATE FUNCTION relay.unpublish_source(s relay.sources)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = s.table_oid) THEN
        RETURN;  -- the table was dropped
    END IF;
    IF EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
               WHERE p.pubname = 'relay' AND r.prrelid = s.table_oid) THEN
        EXECUTE format('ALTER PUBLICATION relay DROP TABLE %s', s.table_oid);
    END IF;
    IF s.prior_identity IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY %s', s.table_oid, s.prior_identity);
        UPDATE relay.sources SET prior_identity = NULL WHERE entity = s.entity;
    END IF;
END;
$$;

-- (Re)install one source for the current mode: the dispatcher always; in wal mode its wal
-- function, its table in the publication and no trigger; in the other modes 0009's trigger
-- function and trigger (its wal function, if any, stays until it is next written).
CREATE OR REPLACE FUNCTION relay.install_source(p_entity text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s          relay.sources;
    v_mode     text := (SELECT mode FROM relay.capture);
    v_trigger  text;
    v_function text;
BEGIN
    SELECT * INTO STRICT s FROM relay.sources WHERE entity = p_entity;
    PERFORM relay.install_wal_dispatch();
    IF s.entity = 'booking' THEN
        v_trigger := 'booking_changes_trigger';
        v_function := 'notify_booking_changes';
    ELSE
        v_trigger := 'relay_' || s.entity || '_changes';
        v_function := 'source_' || s.entity;
    END IF;
    IF v_mode = 'wal' THEN
        EXECUTE relay.wal_function_sql(s);
        IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = s.table_oid AND tgname = v_trigger) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, s.table_oid);
        END IF;
        PERFORM relay.publish_source(s);
        RETURN;
    END IF;
    EXECUTE relay.capture_function_sql(s, v_mode);
    -- table_oid::text is the table's name, schema-qualified and quoted where needed.
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = s.table_oid AND tgname = v_trigger) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, s.table_oid);
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION relay.%I()', v_trigger, s.table_oid, v_function);
END;
$$;

-- Whether a source captures its changes in the current mode: its trigger, or in wal mode
-- its table in the publication.
CREATE FUNCTION relay.source_captured(s relay.sources)
RETURNS boolean
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN (SELECT mode FROM relay.capture) = 'wal' THEN EXISTS (
           SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
           WHERE p.pubname = 'relay' AND r.prrelid = s.table_oid)
       ELSE EXISTS (
           SELECT 1 FROM pg_trigger t WHERE t.tgrelid = s.table_oid
           AND t.tgname = CASE WHEN s.entity = 'booking' THEN 'booking_changes_trigger'
                               ELSE 'relay_' || s.entity || '_changes' END)
       END
$$;

-- `relay detach`: 0008's, and in wal mode the table leaves the publication; the wal
-- function goes too.
CREATE OR REPLACE FUNCTION relay.detach_source(p_table text)
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
    PERFORM relay.unpublish_source(s);
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I()', 'source_' || s.entity);
    DELETE FROM relay.sources WHERE entity = s.entity;
    PERFORM relay.install_wal_dispatch();
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I(text, text, text, pg_lsn, integer)', 'wal_' || s.entity);
    PERFORM pg_notify('relay_sources', s.entity);
    RETURN s;
END;
$$;

-- `relay capture MODE`. Between notify and poll, as 0009's: only the trigger functions are
-- replaced. Into wal mode (the CLI has made the publication and the slot first) and out of
-- it, the triggers go or come back and the tables enter or leave the publication in this
-- one transaction. DROP and CREATE TRIGGER lock each table against writes, so every
-- application transaction that touched one committed wholly before this one or starts
-- after it; and the slot decodes each change with the catalog as of that change. A change
-- committed before the switch is therefore captured by the trigger only, and one after it
-- by the slot only (or the other way round). Leaving wal mode, the CLI then records what
-- the slot still holds and drops it.
CREATE OR REPLACE FUNCTION relay.set_capture(p_mode text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s        relay.sources;
    v_old    text;
    v_refuse text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relay.sources'));
    IF p_mode IS NULL OR p_mode NOT IN ('notify', 'poll', 'wal') THEN
        RAISE EXCEPTION 'unknown capture mode %: the modes are notify, poll and wal',
            quote_literal(coalesce(p_mode, '')) USING ERRCODE = '22023';
    END IF;
    SELECT mode INTO STRICT v_old FROM relay.capture FOR UPDATE;
    IF p_mode = 'wal' OR v_old = 'wal' THEN
        -- This commit flushes the WAL up to it, asynchronous commits before it included, so
        -- the slot, which decodes only flushed WAL, shows every change made before the switch.
        SET LOCAL synchronous_commit = on;
    END IF;
    IF p_mode = 'wal' THEN
        v_refuse := relay.wal_refusal();
        IF v_refuse IS NULL AND NOT EXISTS (SELECT 1 FROM pg_replication_slots
                                            WHERE slot_name = 'relay' AND database = current_database()) THEN
            v_refuse := 'the replication slot relay does not exist: run `relay capture wal`';
        END IF;
        IF v_refuse IS NOT NULL THEN
            RAISE EXCEPTION '%', v_refuse USING ERRCODE = '22023';
        END IF;
    END IF;
    UPDATE relay.capture SET mode = p_mode, changed_at = now();
    FOR s IN SELECT * FROM relay.sources ORDER BY entity LOOP
        IF p_mode = 'wal' OR v_old = 'wal' THEN
            PERFORM relay.install_source(s.entity);
            IF p_mode <> 'wal' THEN
                PERFORM relay.unpublish_source(s);
            END IF;
        ELSE
            EXECUTE relay.capture_function_sql(s, p_mode);
        END IF;
    END LOOP;
    PERFORM pg_notify('relay_sources', 'capture');
    RETURN v_old;
END;
$$;

-- The wal reader's pass, in its one transaction: every decoded change not yet recorded (in
-- commit order) through its source's wal function, then the poller's sequencing and
-- wake-up. Returns how many events it sequenced.
CREATE FUNCTION relay.wal_record(p_relids oid[], p_ops text[], p_new text[], p_old text[],
                                 p_lsns pg_lsn[], p_parts integer[])
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    -- The calls in the outer query, over a sorted subquery: in commit order, whatever plan
    -- the skip of recorded changes gets.
    PERFORM count(relay.wal_change(c.relid, c.op, c.new, c.old, c.lsn, c.part))
    FROM (SELECT u.* FROM unnest(p_relids, p_ops, p_new, p_old, p_lsns, p_parts) WITH ORDINALITY
                          AS u(relid, op, new, old, lsn, part, n)
          WHERE NOT EXISTS (SELECT 1 FROM relay.events e WHERE e.wal_lsn = u.lsn AND e.wal_part = u.part)
          ORDER BY u.n) c;
    RETURN relay.poll_events(greatest(cardinality(p_relids), 10000));
END;
$$;

-- The dispatcher for the sources attached so far. Their wal functions are written when a
-- source is installed in wal mode (`relay capture wal`, and then `relay attach` and `relay
-- migrate`), from the generators as the later migrations leave them.
SELECT relay.install_wal_dispatch();
