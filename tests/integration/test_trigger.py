"""The trigger: the seed's channels and payloads plus eventId, and the durable row."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from tests.support import insert_booking


async def listen_all(conn: asyncpg.Connection) -> asyncio.Queue[tuple[str, dict[str, object]]]:
    queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
    for channel in ("booking_created", "booking_updated", "booking_deleted"):
        await conn.add_listener(
            channel, lambda _c, _p, ch, payload: queue.put_nowait((ch, json.loads(payload)))
        )
    return queue


async def test_each_channel_carries_exactly_the_seed_keys_plus_event_id(db_url: str) -> None:
    listener = await asyncpg.connect(db_url)
    writer = await asyncpg.connect(db_url)
    try:
        got = await listen_all(listener)
        await insert_booking(writer, "b1", "m1")
        await writer.execute("""UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b1'""")
        await writer.execute("""DELETE FROM "Booking" WHERE id = 'b1'""")

        created = await asyncio.wait_for(got.get(), 5)
        updated = await asyncio.wait_for(got.get(), 5)
        deleted = await asyncio.wait_for(got.get(), 5)
        ids = [p["eventId"] for _, p in (created, updated, deleted)]
        assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == 3
        assert created == (
            "booking_created",
            {"id": "b1", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": ids[0]},
        )
        assert updated == (
            "booking_updated",
            {
                "id": "b1",
                "merchantId": "m1",
                "oldStatus": "PENDING",
                "newStatus": "CONFIRMED",
                "operation": "UPDATE",
                "eventId": ids[1],
            },
        )
        assert deleted == (
            "booking_deleted",
            {"id": "b1", "merchantId": "m1", "operation": "DELETE", "eventId": ids[2]},
        )
        rows = await writer.fetch(
            "SELECT id, channel, merchant_id, booking_id, payload FROM relay.events ORDER BY id"
        )
        assert [(r["id"], r["channel"], r["merchant_id"], r["booking_id"]) for r in rows] == [
            (ids[0], "booking_created", "m1", "b1"),
            (ids[1], "booking_updated", "m1", "b1"),
            (ids[2], "booking_deleted", "m1", "b1"),
        ]
        assert json.loads(rows[1]["payload"]) == updated[1]
    finally:
        await listener.close()
        await writer.close()


async def test_update_without_status_change_emits_and_records_nothing(db_url: str) -> None:
    listener = await asyncpg.connect(db_url)
    writer = await asyncpg.connect(db_url)
    try:
        await insert_booking(writer, "b1")
        got = await listen_all(listener)
        await writer.execute("""UPDATE "Booking" SET notes = 'moved to 3pm' WHERE id = 'b1'""")
        await writer.execute("""UPDATE "Booking" SET status = 'PENDING' WHERE id = 'b1'""")
        assert await writer.fetchval("SELECT count(*) FROM relay.events") == 1
        try:
            extra = await asyncio.wait_for(got.get(), 0.3)
        except TimeoutError:
            extra = None
        assert extra is None
    finally:
        await listener.close()
        await writer.close()


async def test_oversized_booking_fields_never_break_the_write(db_url: str) -> None:
    """NOTIFY refuses 8000-byte payloads; the write must still commit, the row be whole."""
    listener = await asyncpg.connect(db_url)
    writer = await asyncpg.connect(db_url)
    try:
        got = await listen_all(listener)
        huge = "x" * 20_000
        await insert_booking(writer, huge, "m1")
        channel, payload = await asyncio.wait_for(got.get(), 5)
        assert channel == "booking_created"
        assert payload["truncated"] is True and payload["operation"] == "INSERT"
        row = await writer.fetchrow("SELECT id, payload FROM relay.events")
        assert row is not None and payload["eventId"] == row["id"]
        assert json.loads(row["payload"])["id"] == huge
    finally:
        await listener.close()
        await writer.close()
