"""Capture mode wal on a real server with wal_level = logical: the switch in and out, payloads
equal to the trigger modes', attach and detach, refusals, and recording exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.embedded import EmbeddedPostgres
from relay.store import Store
from relay.wal import BATCH, WalReader, decode, switch
from tests.conftest import _prepare_template
from tests.integration.sourcekit import SNAKE, prepare, relay_cli

TOAST = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)"  # ~13 kB, stored out of line
ORDERS = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (
    no     bigint PRIMARY KEY,
    shop   text NOT NULL,
    state  text NOT NULL,
    total  numeric(10, 2),
    tags   text[],
    meta   jsonb,
    memo   text,
    at     timestamptz
);
CREATE TABLE shop.notes (id int PRIMARY KEY, shop int, body text, n int);
"""
OPS = [
    f"""INSERT INTO "Booking" (id, "merchantId", status, notes) VALUES ('b1', 'mA', 'PENDING', {TOAST})""",
    """UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b1'""",
    """UPDATE "Booking" SET notes = 'short' WHERE id = 'b1'""",  # status unchanged: no event
    """DELETE FROM "Booking" WHERE id = 'b1'""",
    f"""INSERT INTO shop.orders VALUES (7, 's"1', 'NEW', 10.50, '{{a,"b c"}}', '{{"k": [1, "x"]}}', {TOAST},
                                        '2026-01-02 03:04:05+00')""",
    "UPDATE shop.orders SET state = 'PAID' WHERE no = 7",  # memo unchanged and TOASTed
    "UPDATE shop.orders SET memo = 'm' WHERE no = 7",  # not watched: no event
    "UPDATE shop.orders SET total = 11, state = 'SHIPPED' WHERE no = 7",
    "DELETE FROM shop.orders WHERE no = 7",
    "INSERT INTO shop.notes VALUES (1, 42, 'hello', 1)",
    "UPDATE shop.notes SET n = 2, body = NULL WHERE id = 1",
    "UPDATE shop.notes SET n = 2 WHERE id = 1",  # nothing changed: no event
    "DELETE FROM shop.notes WHERE id = 1",
]


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def switch_to(url: str, mode: str) -> str:
    async with connected(url) as conn, connected(url) as session:
        return await switch(Store(conn), Store(session), mode)


async def flush(conn: asyncpg.Connection) -> None:
    """Flush the WAL written so far (the suite's server commits asynchronously, and a slot
    shows only flushed WAL): a transaction that writes WAL and commits synchronously."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        await conn.execute("SELECT pg_logical_emit_message(true, 'relay-test', 'flush')")


async def read_slot(url: str) -> int:
    async with connected(url) as conn:
        await flush(conn)
        return await WalReader().read(Store(conn))


async def attach_shop(url: str) -> None:
    async with connected(url) as conn:
        await conn.execute(ORDERS)
        store = Store(conn)
        await store.attach_source(
            "shop.orders", "order", "shop", "no", ["state", "total"], ["memo", "tags", "meta", "total", "at"]
        )
        await store.attach_source("shop.notes", "note", "shop", "id", [], ["body"])


async def events_after(conn: asyncpg.Connection, after: int) -> list[tuple[str, str, str]]:
    """(channel, merchant_id, payload text without eventId) of the events after id ``after``;
    each event's eventId is its id."""
    rows = await conn.fetch(
        "SELECT id, channel, merchant_id, payload FROM relay.events WHERE id > $1 ORDER BY position", after
    )
    for row in rows:
        assert json.loads(row["payload"])["eventId"] == row["id"]
    texts = await conn.fetch(
        "SELECT (payload - 'eventId')::text AS t FROM relay.events WHERE id > $1 ORDER BY position", after
    )
    return [(r["channel"], r["merchant_id"], t["t"]) for r, t in zip(rows, texts, strict=True)]


async def run_ops_in(url: str, mode: str) -> list[tuple[str, str, str]]:
    await switch_to(url, mode)
    async with connected(url) as conn:
        after = await conn.fetchval("SELECT coalesce(max(id), 0) FROM relay.events")
        for statement in OPS:
            await conn.execute(statement)
        await conn.copy_records_to_table(
            "Booking", records=[("c1", "mB", "NEW", None), ("c2", "mB", "NEW", None)]
        )
        await conn.execute("""DELETE FROM "Booking" WHERE id IN ('c1', 'c2')""")
        if mode == "wal":
            assert await read_slot(url) == 14
        else:
            await Store(conn).poll_events(BATCH)
        return await events_after(conn, after)


async def test_wal_payloads_are_byte_for_byte_those_of_notify_and_poll_mode(wal_db_url: str) -> None:
    await attach_shop(wal_db_url)
    notify = await run_ops_in(wal_db_url, "notify")
    wal = await run_ops_in(wal_db_url, "wal")
    poll = await run_ops_in(wal_db_url, "poll")
    assert len(notify) == 14
    assert wal == notify
    assert poll == notify
    updated = [json.loads(p) for c, _, p in notify if c == "order_updated"]
    assert len(updated[0]["memo"]) == 12800  # the unchanged TOASTed value, from the old row
    assert [json.loads(p) for c, _, p in notify if c == "booking_updated"] == [
        {
            "id": "b1",
            "merchantId": "mA",
            "oldStatus": "PENDING",
            "newStatus": "CONFIRMED",
            "operation": "UPDATE",
        }
    ]


async def slot_and_publication(conn: asyncpg.Connection) -> tuple[int, list[str]]:
    slots = await conn.fetchval(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'relay' AND plugin = 'pgoutput'"
    )
    tables = await conn.fetch(
        "SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables "
        "WHERE pubname = 'relay' ORDER BY 1"
    )
    return slots, [r["t"] for r in tables]


TRIGGERS = "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
IDENTITY = "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass"


async def test_wal_mode_swaps_the_triggers_for_the_publication_and_the_slot_and_back(wal_db_url: str) -> None:
    await prepare(wal_db_url, SNAKE)
    async with connected(wal_db_url) as conn:
        assert await conn.fetchval(TRIGGERS) == 2
        assert await switch_to(wal_db_url, "wal") == "notify"
        assert await conn.fetchval(TRIGGERS) == 0
        assert await slot_and_publication(conn) == (1, ["billing.payments", "public.Booking"])
        assert [await conn.fetchval(IDENTITY, t) for t in ('"Booking"', "billing.payments")] == ["f", "f"]
        assert relay_cli("capture", database_url=wal_db_url).stdout == "wal\n"
        assert await switch_to(wal_db_url, "wal") == "wal"  # again: nothing changes
        assert await slot_and_publication(conn) == (1, ["billing.payments", "public.Booking"])

        await conn.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES ('x', 'm', 'N')""")
        left = relay_cli("capture", "poll", database_url=wal_db_url)  # records what the slot holds
        assert (left.returncode, left.stdout, left.stderr) == (0, "poll\n", "")
        assert await conn.fetchval("SELECT count(*) FROM relay.events WHERE channel = 'booking_created'") == 1
        assert await conn.fetchval(TRIGGERS) == 2
        assert await slot_and_publication(conn) == (0, [])
        assert [await conn.fetchval(IDENTITY, t) for t in ('"Booking"', "billing.payments")] == ["d", "d"]


async def test_attach_and_detach_in_wal_mode_change_the_publication(wal_db_url: str) -> None:
    await switch_to(wal_db_url, "wal")
    await prepare(wal_db_url, SNAKE)  # attached in wal mode
    async with connected(wal_db_url) as conn:
        assert await conn.fetchval(TRIGGERS) == 0
        assert (await slot_and_publication(conn))[1] == ["billing.payments", "public.Booking"]
        assert await conn.fetchval(IDENTITY, "billing.payments") == "f"
        await conn.execute(SNAKE.insert, "101", "mA")
        assert await read_slot(wal_db_url) == 1
        payload = json.loads(
            await conn.fetchval("SELECT payload FROM relay.events WHERE channel = 'payment_created'")
        )
        assert payload["id"] == "101" and payload["amount_cents"] == 1200

        await Store(conn).detach_source("billing.payments")
        assert (await slot_and_publication(conn))[1] == ["public.Booking"]
        assert await conn.fetchval(IDENTITY, "billing.payments") == "d"
        await conn.execute(SNAKE.watched, "101")
        assert await read_slot(wal_db_url) == 0
        assert await conn.fetchval("SELECT count(*) FROM relay.events WHERE channel LIKE 'payment%'") == 1


async def test_a_change_recorded_but_not_yet_moved_past_is_not_recorded_twice(wal_db_url: str) -> None:
    await switch_to(wal_db_url, "wal")
    async with connected(wal_db_url) as conn:
        store = Store(conn)
        for i in range(3):
            await conn.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm', 'N')""", f"b{i}"
            )
        await conn.copy_records_to_table("Booking", records=[(f"c{i}", "m", "N", None) for i in range(3)])
        await flush(conn)
        _upto, messages = await store.wal_peek(BATCH)
        assert await WalReader().record(store, decode(messages)) == 6  # then the process dies
        assert await WalReader().read(store) == 0  # the next reader replays them: refused
        assert await conn.fetchval("SELECT count(DISTINCT payload->>'id') FROM relay.events") == 6
        assert await conn.fetchval("SELECT count(*) FROM relay.events WHERE position IS NOT NULL") == 6
        _upto, messages = await store.wal_peek(BATCH)
        assert messages == []  # and the slot moved on


async def test_wal_mode_is_refused_with_one_line_where_wal_level_is_not_logical() -> None:
    server = EmbeddedPostgres(durable=False, wal_level="replica")
    try:
        await asyncio.to_thread(server.start)
        await _prepare_template(server.url, "relay")
        url = server.url_for("relay")
        refused = relay_cli("capture", "wal", database_url=url)
        message = (
            "relay capture: capture mode wal needs wal_level = logical (the server has replica): "
            "set it in postgresql.conf and restart PostgreSQL"
        )
        assert (refused.returncode, refused.stdout, refused.stderr.splitlines()) == (1, "", [message])
        assert relay_cli("capture", database_url=url).stdout == "notify\n"
        async with connected(url) as conn:
            assert await slot_and_publication(conn) == (0, [])
            assert await conn.fetchval(TRIGGERS) == 1
    finally:
        await asyncio.to_thread(server.destroy)


async def test_wal_mode_is_refused_to_a_role_without_replication(wal_db_url: str) -> None:
    async with connected(wal_db_url) as conn:
        await conn.execute("DROP ROLE IF EXISTS relay_app; CREATE ROLE relay_app LOGIN")
        await conn.execute("GRANT USAGE ON SCHEMA relay TO relay_app")
    try:
        url = wal_db_url.replace("postgres@", "relay_app@")
        refused = relay_cli("capture", "wal", database_url=url)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "relay capture: capture mode wal needs the REPLICATION attribute for role relay_app: "
            "ALTER ROLE relay_app REPLICATION"
        ]
    finally:
        async with connected(wal_db_url) as conn:
            await conn.execute("DROP OWNED BY relay_app; DROP ROLE relay_app")


def _lines(lines: list[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    return [line for line in lines if line[1].startswith(prefix)]


async def test_an_invalidated_slot_is_an_error_a_metric_and_a_failed_check_with_a_way_back(
    wal_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from relay import metrics
    from relay.check import check
    from tests.conftest import make_settings

    await switch_to(wal_db_url, "wal")
    settings = make_settings(wal_db_url)
    held = _lines(await check(settings), "capture mode")
    assert held[0][0] == "warn" and "no relay process reads the slot now" in held[0][1]
    assert "the slot retains" in held[0][1]
    async with connected(wal_db_url) as conn:
        await conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        await conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(3):
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler "
                    "SELECT md5(i::text) FROM generate_series(1, 20000) i"
                )
                await conn.execute("SELECT pg_switch_wal()")
            await conn.execute("CHECKPOINT")
            assert (
                await conn.fetchval("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'relay'")
                == "lost"
            )
        finally:
            await conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            await conn.execute("SELECT pg_reload_conf()")
        reader = WalReader()
        assert await reader(Store(conn)) == (0, False)
    assert reader.lost is not None
    assert metrics.wal_slot_lost._value.get() == 1
    assert any("relay capture poll` then `relay capture wal`" in r.getMessage() for r in caplog.records)
    failed = _lines(await check(settings), "capture mode")
    assert failed[0][0] == "fail" and "invalidated" in failed[0][1]

    assert relay_cli("capture", "poll", database_url=wal_db_url).returncode == 0
    assert relay_cli("capture", "wal", database_url=wal_db_url).stdout == "wal\n"
    async with connected(wal_db_url) as conn:
        await conn.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES ('z', 'm', 'N')""")
        await flush(conn)
        assert await WalReader()(Store(conn)) == (1, False)
    metrics.wal_slot_lost.set(0)


async def test_a_booking_table_whose_key_is_no_string_gets_the_same_payloads_in_every_mode(
    wal_db_url: str,
) -> None:
    """The booking payload renders id and merchantId as their SQL type renders: compact rows
    (poll mode's trigger, wal mode's recording) must not turn an integer key into a string."""
    async with connected(wal_db_url) as conn:
        await conn.execute('ALTER TABLE "Booking" ALTER COLUMN id TYPE integer USING 0')
        await conn.execute('ALTER TABLE "Booking" ALTER COLUMN "merchantId" TYPE bigint USING 0')
        await conn.execute("SELECT relay.install_source('booking')")  # as `relay migrate` would
    payloads = {}
    for mode in ("notify", "poll", "wal"):
        await switch_to(wal_db_url, mode)
        async with connected(wal_db_url) as conn:
            after = await conn.fetchval("SELECT coalesce(max(id), 0) FROM relay.events")
            await conn.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES (7, 42, 'NEW')""")
            await conn.execute("""UPDATE "Booking" SET status = 'PAID' WHERE id = 7""")
            await conn.execute("""DELETE FROM "Booking" WHERE id = 7""")
            if mode == "wal":
                assert await read_slot(wal_db_url) == 3
            else:
                await Store(conn).poll_events(BATCH)
            payloads[mode] = await events_after(conn, after)
    assert json.loads(payloads["notify"][0][2]) == {
        "id": 7, "merchantId": 42, "status": "NEW", "operation": "INSERT"
    }  # fmt: skip
    assert payloads["poll"] == payloads["notify"]
    assert payloads["wal"] == payloads["notify"]
