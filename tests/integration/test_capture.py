"""Capture modes in the database: `relay capture`, the trigger functions of each mode, and the
poller's pass (relay.poll_events)."""

from __future__ import annotations

import asyncio
import json
from importlib import resources

import asyncpg
import pytest

from relay.events import WAKE_CHANNEL
from relay.store import Store, migrate, migration_files, q
from tests.conftest import BOOKING_TABLE
from tests.integration.sourcekit import QUOTED, SNAKE, TABLES, Table, execute, lifecycle, prepare, relay_cli
from tests.integration.test_migrate import blank_db
from tests.integration.test_sources import listen, nothing

__all__ = ["blank_db"]  # the fixture

INSERT = """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'mA', 'PENDING')"""
BOOKING_FUNCTION = "SELECT prosrc FROM pg_proc WHERE oid = 'relay.notify_booking_changes'::regproc"
# The trigger functions of every source, by name.
FUNCTIONS = """SELECT p.proname, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
               WHERE NOT t.tgisinternal ORDER BY 1"""


def booking_function_of_0001() -> str:
    text = resources.files("relay.sql").joinpath("0001_events.sql").read_text("utf-8")
    return text[text.index("CREATE FUNCTION relay.notify_booking_changes()") :].split("$$", 2)[1]


async def trigger_functions(db_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(db_url)
    try:
        return {r["proname"]: r["prosrc"] for r in await conn.fetch(FUNCTIONS)}
    finally:
        await conn.close()


async def test_capture_prints_the_mode_and_switches_every_source_at_once(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    assert relay_cli("capture", database_url=db_url).stdout == "notify\n"
    functions = await trigger_functions(db_url)
    assert set(functions) == {"notify_booking_changes", "source_payment"}
    assert all("pg_notify" in body for body in functions.values())

    switched = relay_cli("capture", "poll", database_url=db_url)
    assert (switched.returncode, switched.stdout, switched.stderr) == (0, "poll\n", "")
    assert relay_cli("capture", database_url=db_url).stdout == "poll\n"
    assert not any("pg_notify" in body for body in (await trigger_functions(db_url)).values())

    assert relay_cli("capture", "notify", database_url=db_url).stdout == "notify\n"
    assert await trigger_functions(db_url) == functions


async def test_in_notify_mode_the_booking_function_is_0001s_byte_for_byte(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval(BOOKING_FUNCTION) == booking_function_of_0001()
        await Store(conn).set_capture("poll")
        assert await conn.fetchval(BOOKING_FUNCTION) != booking_function_of_0001()
        assert await Store(conn).set_capture("notify") == "poll"
        assert await conn.fetchval(BOOKING_FUNCTION) == booking_function_of_0001()
    finally:
        await conn.close()


async def poll(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT relay.poll_events()"))


async def test_upgrading_to_capture_modes_keeps_every_notify_function_byte_for_byte(blank_db: str) -> None:
    conn = await asyncpg.connect(blank_db)
    try:
        await conn.execute(BOOKING_TABLE)
        await execute(blank_db, (SNAKE.ddl, ()), (QUOTED.ddl, ()))
        async with conn.transaction():  # a database as the release before capture modes left it
            await conn.execute(q("migrations_table"))
            for name, text in migration_files():
                if name >= "0009":
                    break
                await conn.execute(text)
                await conn.execute(q("migration_record"), name)
            await conn.execute(q("attach_booking"))
        for table in (SNAKE, QUOTED):
            await table.attach(conn)
        before = {r["proname"]: r["prosrc"] for r in await conn.fetch(FUNCTIONS)}
        assert len(before) == 3

        assert "0009_capture" in await migrate(conn)
        assert {r["proname"]: r["prosrc"] for r in await conn.fetch(FUNCTIONS)} == before
        await Store(conn).set_capture("poll")
        await Store(conn).set_capture("notify")
        assert {r["proname"]: r["prosrc"] for r in await conn.fetch(FUNCTIONS)} == before
    finally:
        await conn.close()


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
async def test_poll_mode_writes_the_same_events_without_any_notify(db_url: str, table: Table) -> None:
    await prepare(db_url, table)
    key, merchant = table.keys[0], table.merchants[0]
    listener = await asyncpg.connect(db_url)
    try:
        notified = await listen(listener, *(table.channel(v) for v in ("created", "updated", "deleted")))
        await lifecycle(db_url, table, key, merchant)  # notify mode
        for _ in range(3):
            await asyncio.wait_for(notified.get(), 5)
        await poll(listener)
        await Store(listener).set_capture("poll")
        await lifecycle(db_url, table, key, merchant)
        await nothing(notified)

        # Durable in relay.events at the writer's commit, as in notify mode; not yet sequenced.
        assert await listener.fetchval("SELECT count(*) FROM relay.events") == 6
        assert await listener.fetchval("SELECT count(*) FROM relay.events WHERE position IS NULL") == 3
        woken = await listen(listener, WAKE_CHANNEL)
        assert await poll(listener) == 3
        assert await asyncio.wait_for(woken.get(), 5) == (WAKE_CHANNEL, 3)  # one wake-up per batch
        assert await listener.fetchval("SELECT count(*) FROM relay.events WHERE position IS NULL") == 0
        rows = await listener.fetch("SELECT id, channel, merchant_id, payload FROM relay.events ORDER BY id")
        notify_rows, poll_rows = rows[:3], rows[3:]
        for made in (notify_rows, poll_rows):  # the same rows and payloads, eventId included
            ids = [r["id"] for r in made]
            assert [(r["channel"], r["merchant_id"], json.loads(r["payload"])) for r in made] == [
                (table.channel("created"), merchant, table.created(key, merchant, ids[0])),
                (table.channel("updated"), merchant, table.updated(key, merchant, ids[1])),
                (table.channel("deleted"), merchant, table.deleted(key, merchant, ids[2])),
            ]
    finally:
        await listener.close()


async def test_poll_mode_booking_events_carry_the_seed_payloads(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).set_capture("poll")
        await conn.execute(INSERT, "b1")
        await conn.execute("""UPDATE "Booking" SET notes = 'no status change' WHERE id = 'b1'""")
        await conn.execute("""UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b1'""")
        await conn.execute("""DELETE FROM "Booking" WHERE id = 'b1'""")
        assert await poll(conn) == 3
        rows = await conn.fetch("SELECT id, channel, payload FROM relay.events ORDER BY id")
        ids = [r["id"] for r in rows]
        assert [(r["channel"], json.loads(r["payload"])) for r in rows] == [
            ("booking_created", {"id": "b1", "merchantId": "mA", "status": "PENDING", "operation": "INSERT",
                                 "eventId": ids[0]}),
            ("booking_updated", {"id": "b1", "merchantId": "mA", "oldStatus": "PENDING",
                                 "newStatus": "CONFIRMED", "operation": "UPDATE", "eventId": ids[1]}),
            ("booking_deleted", {"id": "b1", "merchantId": "mA", "operation": "DELETE", "eventId": ids[2]}),
        ]  # fmt: skip
    finally:
        await conn.close()


async def test_a_session_opened_before_a_switch_follows_it_from_its_next_transaction(db_url: str) -> None:
    writer, listener, admin = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        notified = await listen(listener, "booking_created")
        await writer.execute(INSERT, "before")  # the writer's session has run the notify function
        assert (await asyncio.wait_for(notified.get(), 5))[1]["id"] == "before"

        await Store(admin).set_capture("poll")
        await writer.execute(INSERT, "during")
        await nothing(notified, 0.5)
        assert await poll(admin) == 2  # "during" is recorded all the same, after "before"
        ordered = "SELECT payload->>'id' FROM relay.events ORDER BY position"
        assert [r[0] for r in await admin.fetch(ordered)] == ["before", "during"]

        await Store(admin).set_capture("notify")
        await writer.execute(INSERT, "after")
        assert (await asyncio.wait_for(notified.get(), 5))[1]["id"] == "after"
    finally:
        for conn in (writer, listener, admin):
            await conn.close()


async def test_switching_waits_for_no_transaction_of_the_application(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    busy, admin = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        busy_tx = busy.transaction()
        await busy_tx.start()  # holds locks on both tables until it ends
        await busy.execute(INSERT, "b1")
        await busy.execute(SNAKE.insert, "101", "mA")
        await admin.execute("SET lock_timeout = '2s'")  # dropping a trigger would wait for busy
        assert await Store(admin).set_capture("poll") == "notify"
        assert await Store(admin).set_capture("notify") == "poll"
        await busy_tx.commit()
    finally:
        await busy.close()
        await admin.close()


async def test_sources_attached_and_triggers_restored_in_poll_mode_write_without_notify(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).set_capture("poll")
        await conn.execute('DROP TRIGGER booking_changes_trigger ON "Booking"')
    finally:
        await conn.close()
    await prepare(db_url, SNAKE)
    assert relay_cli("migrate", database_url=db_url).returncode == 0  # puts the trigger back
    functions = await trigger_functions(db_url)
    assert set(functions) == {"notify_booking_changes", "source_payment"}
    assert not any("pg_notify" in body for body in functions.values())


async def test_an_idle_poll_writes_nothing_and_a_busy_one_sequences(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    assigned = "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
    try:
        await Store(conn).set_capture("poll")
        async with conn.transaction():
            assert await poll(conn) == 0
            assert not await conn.fetchval(assigned)  # no transaction id: no WAL, no commit to flush
        await execute(db_url, (INSERT, ("b1",)))
        async with conn.transaction():
            assert await poll(conn) == 1
            assert await conn.fetchval(assigned)
    finally:
        await conn.close()


async def test_in_poll_mode_an_event_that_commits_later_is_sequenced_later_whatever_its_id(
    db_url: str,
) -> None:
    older, newer, poller = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        await Store(poller).set_capture("poll")
        older_tx = older.transaction()
        await older_tx.start()
        await older.execute(INSERT, "A")  # takes the lower id, commits last
        await newer.execute(INSERT, "B")
        assert await poll(poller) == 1  # B, while A is still open
        await older_tx.commit()
        assert await poll(poller) == 1
        rows = await poller.fetch("SELECT id, payload->>'id' AS booking FROM relay.events ORDER BY position")
        assert [r["booking"] for r in rows] == ["B", "A"]
        assert rows[1]["id"] < rows[0]["id"]
    finally:
        for conn in (older, newer, poller):
            await conn.close()


async def _poll_mode_at(conn: asyncpg.Connection, version: str) -> None:
    """A database migrated up to (not including) ``version``, booking attached, in poll mode."""
    await conn.execute(BOOKING_TABLE)
    async with conn.transaction():
        await conn.execute(q("migrations_table"))
        for name, text in migration_files():
            if name >= version:
                break
            await conn.execute(text)
            await conn.execute(q("migration_record"), name)
        await conn.execute(q("attach_booking"))
    await Store(conn).set_capture("poll")


async def test_upgrading_a_poll_mode_database_keeps_its_waiting_inbox_rows_and_writes_events(
    blank_db: str,
) -> None:
    """0009 wrote poll-mode rows into relay.inbox; after 0013 new rows go to relay.events,
    and what waited in the inbox is still sequenced, once, with its eventId."""
    conn = await asyncpg.connect(blank_db)
    try:
        await _poll_mode_at(conn, "0013")
        await conn.execute(INSERT, "before")
        assert await conn.fetchval("SELECT count(*) FROM relay.inbox") == 1

        assert "0013_poll_writes_events" in await migrate(conn)
        await conn.execute(INSERT, "after")
        assert await conn.fetchval("SELECT count(*) FROM relay.inbox") == 1  # not written again
        assert await poll(conn) == 2
        rows = await conn.fetch("SELECT id, booking_id, payload, position FROM relay.events ORDER BY id")
        assert [json.loads(r["payload"])["id"] for r in rows] == ["before", "after"]
        assert all(json.loads(r["payload"])["eventId"] == r["id"] and r["position"] for r in rows)
        assert rows[1]["booking_id"] == "after"
        assert await conn.fetchval("SELECT count(*) FROM relay.inbox") == 0
    finally:
        await conn.close()


# Columns of every kind the compact rows treat apart: strings (text, varchar, uuid, an enum)
# written as text, everything else (numbers, booleans, times, JSON, arrays, padded char, NULL)
# written as its to_jsonb text; names that need quoting; values that need escaping.
GADGET = """
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE "Gadget" (
    id      uuid PRIMARY KEY,
    shop    bigint,
    label   text,
    "Price" numeric,
    ratio   float8,
    ok      boolean,
    at      timestamptz,
    day     date,
    meta    jsonb,
    kind    mood,
    code    char(4),
    tags    text[],
    note    varchar(20),
    "no""ne" text
);
CREATE TABLE gizmo (id integer PRIMARY KEY, shop text, label text, n numeric)"""
GADGET_FIELDS = [
    "label",
    "Price",
    "ratio",
    "ok",
    "at",
    "day",
    "meta",
    "kind",
    "code",
    "tags",
    "note",
    'no"ne',
]
GADGET_KEY = "00000000-0000-4000-8000-00000000000a"
GADGET_LIFECYCLE = [
    """INSERT INTO "Gadget" VALUES ($1, 7, 'say "hi" \\ ü', 1.50, 0.1, true, '2026-01-02 03:04:05.678+01',
       '2026-01-02', '{"b": [1, 2.0], "a": null}', 'calm', 'ab', '{x,"y z"}', 'short', NULL)""",
    """UPDATE "Gadget" SET "Price" = 2.500, at = at + interval '1 day', kind = 'busy' WHERE id = $1""",
    """UPDATE "Gadget" SET note = 'unwatched' WHERE id = $1""",
    """UPDATE "Gadget" SET label = NULL WHERE id = $1""",
    """DELETE FROM "Gadget" WHERE id = $1""",
]


async def _gadget_payloads(conn: asyncpg.Connection, mode: str) -> list[str]:
    """Run the gadget lifecycle in ``mode``; each event's payload text, eventId left out."""
    await Store(conn).set_capture(mode)
    start = await conn.fetchval("SELECT coalesce(max(id), 0) FROM relay.events")
    for statement in GADGET_LIFECYCLE:
        await conn.execute(statement, GADGET_KEY)
    await conn.execute("INSERT INTO gizmo VALUES (1, 's1', 'a', 1.0)")
    await conn.execute("UPDATE gizmo SET n = 2.00 WHERE id = 1")
    await conn.execute("UPDATE gizmo SET n = 2.00 WHERE id = 1")  # nothing changed: no event
    await conn.execute("DELETE FROM gizmo")
    if mode == "poll":
        waiting = await conn.fetch(
            "SELECT channel, payload IS NULL AS compact FROM relay.events WHERE id > $1 ORDER BY id", start
        )
        # Written compact, payload built when sequenced, but for an UPDATE of a source without
        # --watch (the trigger compares the rows as jsonb, and writes the payload whole).
        assert [(r["channel"], r["compact"]) for r in waiting] == [
            ("gadget_created", True), ("gadget_updated", True), ("gadget_updated", True),
            ("gadget_deleted", True), ("gizmo_created", True), ("gizmo_updated", False),
            ("gizmo_deleted", True),
        ]  # fmt: skip
    await poll(conn)
    rows = await conn.fetch(
        "SELECT id, args, (payload->>'eventId')::bigint AS event_id, (payload - 'eventId')::text AS payload "
        "FROM relay.events WHERE id > $1 ORDER BY id",
        start,
    )
    assert all(r["event_id"] == r["id"] and r["args"] is None for r in rows)
    await conn.execute("""DELETE FROM relay.events WHERE id > $1""", start)
    return [r["payload"] for r in rows]


async def test_poll_mode_builds_notify_modes_payloads_byte_for_byte_from_compact_rows(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(GADGET)
        await Store(conn).attach_source("Gadget", "gadget", "shop", "id", ["label", "Price", "at", "kind"],
                                        GADGET_FIELDS)  # fmt: skip
        await Store(conn).attach_source("gizmo", "gizmo", "shop", "id", [], ["label", "n"])
        notify = await _gadget_payloads(conn, "notify")
        assert len(notify) == 7
        assert json.loads(notify[1])["changes"]["Price"] == {"old": 1.50, "new": 2.500}
        assert '"Price": 2.500' in notify[1] and '"code": "ab  "' in notify[0]  # as to_jsonb renders them
        assert await _gadget_payloads(conn, "poll") == notify
    finally:
        await conn.close()


async def test_upgrading_a_poll_mode_database_with_events_in_flight_writes_compact_rows(
    blank_db: str,
) -> None:
    """Rows 0013's poll mode wrote, one committed and one in a transaction still open while
    0014 is applied, keep their payload; rows written after it are compact; all are sequenced
    once with the payload notify mode gives them."""
    conn, writer = await asyncpg.connect(blank_db), None
    try:
        await _poll_mode_at(conn, "0014")
        await conn.execute(INSERT, "before")
        writer = await asyncpg.connect(blank_db)
        open_transaction = writer.transaction()
        await open_transaction.start()
        await writer.execute(INSERT, "in-flight")

        migrating = asyncio.create_task(migrate(conn))
        await asyncio.sleep(0.3)
        assert not migrating.done()  # waits for the writer's transaction
        await open_transaction.commit()
        assert "0014_poll_compact_rows" in await asyncio.wait_for(migrating, 10)
        await writer.execute(INSERT, "after")  # the writer's session follows at once

        written = await conn.fetch(
            "SELECT booking_id, payload IS NULL AS compact FROM relay.events ORDER BY id"
        )
        assert [(r["booking_id"], r["compact"]) for r in written] == [
            ("before", False),
            ("in-flight", False),
            ("after", True),
        ]
        assert await poll(conn) == 3
        rows = await conn.fetch("SELECT id, payload, position FROM relay.events ORDER BY id")
        assert [json.loads(r["payload"]) for r in rows] == [
            {"id": b, "merchantId": "mA", "status": "PENDING", "operation": "INSERT", "eventId": r["id"]}
            for b, r in zip(("before", "in-flight", "after"), rows, strict=True)
        ]
        assert all(r["position"] for r in rows)
    finally:
        await conn.close()
        if writer is not None:
            await writer.close()
