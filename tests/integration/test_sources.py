"""Sources: `relay attach` / `detach` / `sources`, the generated triggers and their payloads."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from relay.errors import SourceError
from relay.store import Store
from tests.conftest import Cluster
from tests.integration.sourcekit import PRISMA, QUOTED, SNAKE, TABLES, Table, execute, prepare, relay_cli

CHANNELS_OF = ("created", "updated", "deleted")


async def listen(conn: asyncpg.Connection, *channels: str) -> asyncio.Queue[tuple[str, dict[str, object]]]:
    queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
    for channel in channels:
        await conn.add_listener(
            channel, lambda _c, _p, ch, payload: queue.put_nowait((ch, json.loads(payload)))
        )
    return queue


async def nothing(queue: asyncio.Queue[tuple[str, dict[str, object]]], wait: float = 0.3) -> None:
    try:
        extra = await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected notification {extra}")


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
async def test_each_change_notifies_and_records_exactly_the_contract_payload(
    db_url: str, table: Table
) -> None:
    await prepare(db_url, table)
    listener = await asyncpg.connect(db_url)
    try:
        got = await listen(listener, *(table.channel(v) for v in CHANNELS_OF))
        key, merchant = table.keys[0], table.merchants[0]
        await execute(db_url, (table.insert, (key, merchant)), (table.watched, (key,)))
        created, updated = await asyncio.wait_for(got.get(), 5), await asyncio.wait_for(got.get(), 5)
        await execute(db_url, (table.unwatched, (key,)))
        await nothing(got)  # only columns that are not watched changed: no event
        await execute(db_url, (table.delete, (key,)))
        deleted = await asyncio.wait_for(got.get(), 5)

        ids = [int(payload["eventId"]) for _, payload in (created, updated, deleted)]  # type: ignore[call-overload]
        assert created == (table.channel("created"), table.created(key, merchant, ids[0]))
        assert updated == (table.channel("updated"), table.updated(key, merchant, ids[1]))
        assert deleted == (table.channel("deleted"), table.deleted(key, merchant, ids[2]))
        rows = await listener.fetch("SELECT id, channel, merchant_id, payload FROM relay.events ORDER BY id")
        assert [(r["id"], r["channel"], r["merchant_id"]) for r in rows] == [
            (ids[0], table.channel("created"), merchant),
            (ids[1], table.channel("updated"), merchant),
            (ids[2], table.channel("deleted"), merchant),
        ]
        assert [json.loads(r["payload"]) for r in rows] == [created[1], updated[1], deleted[1]]
    finally:
        await listener.close()


async def test_without_watch_every_changed_column_is_an_event_and_a_no_op_update_is_none(db_url: str) -> None:
    await prepare(db_url, SNAKE, attach=False)
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).attach_source("billing.payments", "payment", "merchant_id", "payment_no", [], [])
        got = await listen(conn, "payment_updated")
        await conn.execute("INSERT INTO billing.payments VALUES (1, 'mA', 'PENDING', 100, NULL)")
        await conn.execute("UPDATE billing.payments SET state = 'PENDING'")  # nothing changed
        await conn.execute("UPDATE billing.payments SET note = 'n', amount_cents = 200")
        _, payload = await asyncio.wait_for(got.get(), 5)
        assert payload["changes"] == {
            "note": {"old": None, "new": "n"},
            "amount_cents": {"old": 100, "new": 200},
        }
        await nothing(got)
    finally:
        await conn.close()


async def test_a_row_without_a_tenant_is_recorded_with_no_merchant(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    conn = await asyncpg.connect(db_url)
    try:
        got = await listen(conn, "payment_created")
        await execute(db_url, (SNAKE.insert, ("7", None)))  # type: ignore[arg-type]
        _, payload = await asyncio.wait_for(got.get(), 5)
        assert payload["merchantId"] is None and payload["id"] == "7"
        row = await conn.fetchrow("SELECT merchant_id, payload FROM relay.events")
        assert row is not None and row["merchant_id"] is None
    finally:
        await conn.close()


async def test_oversized_fields_never_break_the_write(db_url: str) -> None:
    """The 8000-byte NOTIFY rule holds for attached sources as for bookings."""
    await prepare(db_url, SNAKE, attach=False)
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).attach_source(
            "billing.payments", "payment", "merchant_id", "payment_no", [], ["note"]
        )
        got = await listen(conn, "payment_created")
        huge = "x" * 20_000
        await conn.execute("INSERT INTO billing.payments VALUES (1, 'mA', 'PENDING', 100, $1)", huge)
        _, payload = await asyncio.wait_for(got.get(), 5)
        assert payload["truncated"] is True and payload["operation"] == "INSERT"
        assert payload["merchantId"] == "mA"
        row = await conn.fetchrow("SELECT id, payload FROM relay.events")
        assert row is not None and payload["eventId"] == row["id"]
        assert json.loads(row["payload"])["note"] == huge
    finally:
        await conn.close()


async def test_attach_prints_the_source_and_sources_lists_it_after_booking(db_url: str) -> None:
    await prepare(db_url, SNAKE, attach=False)
    result = relay_cli(
        "attach", "billing.payments", "--entity", "payment", "--tenant-column", "merchant_id",
        "--key", "payment_no", "--watch", "state", "--fields", "amount_cents", database_url=db_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = (
        '{"table":"billing.payments","entity":"payment","tenantColumn":"merchant_id",'
        '"key":"payment_no","watch":["state"],"fields":["amount_cents"]}'
    )
    assert result.stdout == line + "\n"
    listed = relay_cli("sources", database_url=db_url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        '{"table":"Booking","entity":"booking","tenantColumn":"merchantId","key":"id",'
        '"watch":["status"],"fields":["status"]}',
        line,
    ]


async def test_attaching_again_replaces_the_options(db_url: str) -> None:
    await prepare(db_url, PRISMA)
    conn = await asyncpg.connect(db_url)
    try:
        again = await Store(conn).attach_source("Invoice", "invoice", "merchantId", "id", [], ["totalCents"])
        assert (again.watch, again.fields) == ((), ("totalCents",))
        assert await conn.fetchval("SELECT count(*) FROM relay.sources WHERE entity = 'invoice'") == 1
        triggers = await conn.fetchval(
            """SELECT count(*) FROM pg_trigger WHERE tgrelid = '"Invoice"'::regclass"""
        )
        assert triggers == 1
        got = await listen(conn, "invoice_updated")
        await conn.execute(PRISMA.insert, "i1", "mA")
        await conn.execute(PRISMA.unwatched, "i1")  # watched by nothing now: any column counts
        _, payload = await asyncio.wait_for(got.get(), 5)
        assert set(payload["changes"]) == {"updatedAt"}  # type: ignore[arg-type]
        assert payload["totalCents"] == 990 and "paymentStatus" not in payload
    finally:
        await conn.close()


async def test_two_attach_runs_at_once_both_succeed_with_one_trigger(db_url: str) -> None:
    await prepare(db_url, SNAKE, attach=False)
    args = ("attach", "billing.payments", "--entity", "payment", "--tenant-column", "merchant_id",
            "--key", "payment_no", "--watch", "state")  # fmt: skip
    results = await asyncio.gather(
        *(asyncio.to_thread(relay_cli, *args, database_url=db_url) for _ in range(2))
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM relay.sources WHERE entity = 'payment'") == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'billing.payments'::regclass"
            )
            == 1
        )
    finally:
        await conn.close()


async def test_two_tables_claiming_one_entity_at_once_one_wins_the_other_is_refused(db_url: str) -> None:
    await prepare(db_url, SNAKE, PRISMA, attach=False)
    conns = [await asyncpg.connect(db_url) for _ in range(2)]
    try:
        results = await asyncio.gather(
            Store(conns[0]).attach_source("billing.payments", "money", "merchant_id", "payment_no", [], []),
            Store(conns[1]).attach_source("Invoice", "money", "merchantId", "id", [], []),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, SourceError)]
        assert len(refused) == 1 and "entity name 'money' is taken by table" in str(refused[0]), results
        assert await conns[0].fetchval("SELECT count(*) FROM relay.sources WHERE entity = 'money'") == 1
    finally:
        for conn in conns:
            await conn.close()


REFUSALS = [
    (("nope",), "table 'nope' does not exist"),
    (("billing.nope",), "table 'billing.nope' does not exist"),
    (("payments",), "table 'payments' does not exist"),  # not on the search_path: names are exact
    (("billing.payments", "--entity", "Payment"), "invalid entity name 'Payment'"),
    (("billing.payments", "--entity", "pay-ment"), "invalid entity name 'pay-ment'"),
    (("billing.payments", "--entity", "p" * 31), "invalid entity name"),
    (("billing.payments", "--entity", "booking"), "entity name 'booking' is taken"),
    (("billing.payments", "--entity", "invoice"), "entity name 'invoice' is taken by table 'Invoice'"),
    (
        ("Invoice", "--entity", "bill", "--tenant-column", "merchantId"),
        "'Invoice' is already attached as 'invoice'",
    ),
    (
        ("billing.payments", "--tenant-column", "merchantId"),
        "table 'billing.payments' has no column 'merchantId'",
    ),
    (("billing.payments", "--key", "id"), "has no column 'id'"),
    (("billing.payments", "--watch", "state,State"), "has no column 'State'"),
    (("billing.payments", "--fields", "nope"), "has no column 'nope'"),
    (("billing.payments", "--fields", "payment_no", "--key", "state"), None),  # fine: a control
    (("billing.v",), "'billing.v' is a view, not a table"),
    (("billing.mv",), "'billing.mv' is a materialized view, not a table"),
    (("billing.seq",), "'billing.seq' is a sequence, not a table"),
    (("relay.events", "--tenant-column", "merchant_id"), "'relay.events' is in schema relay"),
    (("Booking", "--tenant-column", "merchantId"), "'Booking' is the built-in source 'booking'"),
]


@pytest.mark.parametrize(("args", "message"), REFUSALS)
async def test_attach_refuses_bad_input_with_one_line_and_exit_1(
    db_url: str, args: tuple[str, ...], message: str | None
) -> None:
    await prepare(db_url, SNAKE, attach=False)
    await prepare(db_url, PRISMA)
    await execute(
        db_url,
        ("CREATE VIEW billing.v AS SELECT * FROM billing.payments", ()),
        ("CREATE MATERIALIZED VIEW billing.mv AS SELECT * FROM billing.payments", ()),
        ("CREATE SEQUENCE billing.seq", ()),
    )
    defaults = {"--entity": "payment", "--tenant-column": "merchant_id", "--key": "payment_no"}
    table, options = args[0], dict(zip(args[1::2], args[2::2], strict=True))
    argv = [table, *(x for k, v in {**defaults, **options}.items() for x in (k, v))]
    result = relay_cli("attach", *argv, database_url=db_url)
    if message is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay attach: "), result.stderr
    assert message in lines[0]
    conn = await asyncpg.connect(db_url)
    try:  # nothing changed
        assert await conn.fetchval("SELECT array_agg(entity ORDER BY entity) FROM relay.sources") == [
            "booking",
            "invoice",
        ]
    finally:
        await conn.close()


async def test_detach_removes_the_trigger_and_keeps_the_recorded_events(db_url: str) -> None:
    await prepare(db_url, QUOTED)
    key, merchant = QUOTED.keys[0], QUOTED.merchants[0]
    await execute(db_url, (QUOTED.insert, (key, merchant)))
    result = relay_cli("detach", QUOTED.table, database_url=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["entity"] == "line_item"
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(QUOTED.watched, key)
        await conn.execute(QUOTED.delete, key)
        assert await conn.fetchval("SELECT array_agg(channel) FROM relay.events") == ["line_item_created"]
        assert await conn.fetchval("SELECT count(*) FROM relay.sources WHERE entity = 'line_item'") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'source_line_item'") == 0
    finally:
        await conn.close()
    again = relay_cli("detach", QUOTED.table, database_url=db_url)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        """relay detach: table 'Sales Ops.Line-Item "v2" $body$' is not attached (see `relay sources`)"""
    ]
    builtin = relay_cli("detach", "Booking", database_url=db_url)
    assert builtin.returncode == 1 and "cannot be detached" in builtin.stderr


async def test_migrate_registers_booking_as_a_source_and_keeps_its_seed_trigger(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await Store(conn).sources()
        assert [s.public() for s in rows] == [
            {
                "table": "Booking",
                "entity": "booking",
                "tenantColumn": "merchantId",
                "key": "id",
                "watch": ["status"],
                "fields": ["status"],
            }
        ]
        trigger = await conn.fetchrow(
            """SELECT t.tgname, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
               WHERE t.tgrelid = '"Booking"'::regclass AND NOT t.tgisinternal"""
        )
        assert tuple(trigger) == ("booking_changes_trigger", "notify_booking_changes")
    finally:
        await conn.close()


async def test_check_names_the_attached_sources_and_one_whose_table_was_recreated(db_url: str) -> None:
    await prepare(db_url, SNAKE, PRISMA)
    ok = relay_cli("check", database_url=db_url)
    assert "ok   sources attached besides booking: invoice, payment" in ok.stdout.splitlines(), ok.stdout
    await execute(db_url, ('DROP TABLE "Invoice"', ()), (PRISMA.ddl, ()))  # recreated: no trigger
    broken = relay_cli("check", database_url=db_url)
    assert broken.returncode == 1
    failed = [line for line in broken.stdout.splitlines() if line.startswith("fail")]
    assert failed == [
        "fail source invoice: the trigger on Invoice is missing (table dropped or recreated?): "
        "run `relay attach` for it again, or `relay detach Invoice`"
    ]
    again = relay_cli(
        "attach", "Invoice", "--entity", "invoice", "--tenant-column", "merchantId", database_url=db_url
    )  # the recreated table is attached anew under its old name
    assert again.returncode == 0, again.stderr
    assert relay_cli("check", database_url=db_url).returncode == 0


async def test_attach_before_migrate_says_to_migrate(cluster: Cluster) -> None:
    name = await cluster.create_database()
    conn = await asyncpg.connect(cluster.url(name))
    try:
        await conn.execute("DROP SCHEMA relay CASCADE")
    finally:
        await conn.close()
    try:
        result = relay_cli("attach", "Booking", "--entity", "b2", "--tenant-column", "merchantId",
                           database_url=cluster.url(name))  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "relay attach: Relay's schema is missing or older than sources: run `relay migrate`"
        ]
    finally:
        await cluster.drop_database(name)
