"""Nothing committed is lost: server restarts, and commits out of id order."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from relay.db import TRANSIENT_ERRORS
from relay.embedded import EmbeddedPostgres
from relay.events import decode_cursor
from relay.store import q
from tests.conftest import make_settings
from tests.support import insert_booking, running


@pytest.mark.restarts_server
async def test_server_restart_mid_stream_loses_no_committed_event(own_server: EmbeddedPostgres) -> None:
    url = own_server.url_for("relay")
    committed: list[str] = []
    stop_writing = asyncio.Event()

    async def writer() -> None:
        conn: asyncpg.Connection | None = None
        n = 0
        while not stop_writing.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(url, timeout=2)
                booking = f"w-{n}"
                n += 1
                await insert_booking(conn, booking)
                committed.append(booking)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
                conn = None
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)
        if conn is not None:
            await conn.close()

    async with running(make_settings(url)) as (_relay, collector):
        task = asyncio.create_task(writer())
        async with asyncio.timeout(20):
            while len(committed) < 50:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(own_server.stop, "fast")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_server.start)
        async with asyncio.timeout(30):
            while len(committed) < 150:
                await asyncio.sleep(0.01)
        stop_writing.set()
        await task

        await collector.wait_for(committed, timeout=20)
        check = await asyncpg.connect(url)
        try:
            in_database = {r["id"] for r in await check.fetch('SELECT id FROM "Booking"')}
        finally:
            await check.close()
        await collector.wait_for(in_database, timeout=10)
        ids = [e.id for e in collector.events]
        assert len(ids) == len(set(ids)), "an event was handed on twice"
        assert set(collector.booking_ids()) == in_database >= set(committed)


async def test_commits_out_of_id_order_reach_live_path_and_cursor_reader(db_url: str) -> None:
    """Transaction A takes the lower event id but commits after B; neither is skipped,
    and B is not held back while A is still open."""
    older = await asyncpg.connect(db_url)
    newer = await asyncpg.connect(db_url)
    reader = await asyncpg.connect(db_url)

    async def read_after(cursor: int) -> list[asyncpg.Record]:
        await reader.execute(q("sequence_events"))
        return list(await reader.fetch(q("merchant_events_after"), "m1", cursor, 100))

    try:
        async with running(make_settings(db_url)) as (_relay, collector):
            start_cursor = 0
            older_tx = older.transaction()
            await older_tx.start()
            await insert_booking(older, "A")
            await insert_booking(newer, "B")  # autocommit: commits first

            await collector.wait_for(["B"], timeout=5)  # while A is still open
            first = await read_after(start_cursor)
            assert [r["payload"] for r in first] and [r["event_id"] for r in first] == [
                collector.events[0].id
            ]

            await older_tx.commit()
            await collector.wait_for(["A"], timeout=5)
            second = await read_after(first[-1]["event_position"])

            assert collector.booking_ids() == ["B", "A"]
            event_a, event_b = collector.events[1], collector.events[0]
            assert event_a.id < event_b.id and event_a.position > event_b.position
            assert [r["event_id"] for r in second] == [event_a.id]
            assert decode_cursor(event_a.cursor) == event_a.position
    finally:
        for conn in (older, newer, reader):
            with contextlib.suppress(Exception):
                await conn.close()


async def test_positions_lost_in_a_crash_are_reassigned_above_every_cursor_handed_out(db_url: str) -> None:
    """The sequencer commits asynchronously; if a crash loses its last commits, the events
    come back unsequenced and the counter goes back. New positions must still lie above
    every position a reader may hold, so resuming readers see duplicates, never gaps."""
    conn = await asyncpg.connect(db_url)
    try:
        for i in range(10):
            await insert_booking(conn, f"b{i}")
        await conn.execute(q("sequence_events"))
        before = await conn.fetch("SELECT id, position FROM relay.events ORDER BY position")
        handed_out = before[-1]["position"]
        kept = before[4]["position"]
        # What a crash that lost the last sequencer commit would leave behind:
        await conn.execute("UPDATE relay.events SET position = NULL WHERE position > $1", kept)
        await conn.execute("UPDATE relay.sequencer SET last_position = $1", kept)
        await insert_booking(conn, "after-crash")
        await conn.execute(q("sequence_events"))
        after = await conn.fetch(
            "SELECT id, position FROM relay.events WHERE position > $1 ORDER BY position", kept
        )
        assert [r["id"] for r in after] == [r["id"] for r in before[5:]] + [after[-1]["id"]]
        assert min(r["position"] for r in after) > handed_out
    finally:
        await conn.close()
