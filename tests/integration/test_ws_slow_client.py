from __future__ import annotations

import asyncio

import asyncpg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.metrics import REGISTRY
from tests.integration.livekit import (
    live_settings,
    recv,
    running,
    small_window_socket,
    token,
    ws_client,
    ws_url,
)

EVENTS = 5000
BATCH = 1000  # one feed batch


async def test_ws_client_that_stops_reading_is_closed_with_1013_while_others_keep_receiving(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        relay.hub.max_buffer = 256 * 1024  # one batch fits; a growing backlog does not
        tok = token(settings, "mA")
        raw = await small_window_socket(relay)
        async with (
            connect(ws_url(relay, f"token={tok}"), sock=raw, max_queue=1, compression=None) as slow,
            ws_client(relay, tok) as fast,
        ):
            assert (await recv(slow))["type"] == "connected"  # then it stops reading
            # Batch after batch, each read in full by the fast client before the next is
            # committed: the fast client never falls behind, the slow one's backlog grows.
            conn = await asyncpg.connect(db_url)
            ids = []
            for start in range(1, EVENTS + 1, BATCH):
                await conn.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status, notes)
                       SELECT 'b' || i, 'mA', 'PENDING', repeat('x', 200)
                       FROM generate_series($1::int, $2::int) AS i""",
                    start,
                    start + BATCH - 1,
                )
                ids += [(await recv(fast))["data"]["id"] for _ in range(BATCH)]
            await conn.close()
            assert ids == [f"b{i}" for i in range(1, EVENTS + 1)]
            assert relay.hub.room_size("mA") == 1  # only the fast client is left in the room
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(slow.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013


async def test_ws_client_that_never_reads_again_is_dropped_after_the_close_grace(db_url: str) -> None:
    settings = live_settings(db_url)
    gauge = {"transport": "ws"}
    async with running(settings) as relay:
        relay.hub.max_buffer = 100 * 1024  # above the transport high-water mark: writing is paused
        relay.hub.close_grace = 0.3
        tok = token(settings, "mA")
        raw = await small_window_socket(relay)
        start = REGISTRY.get_sample_value("relay_ws_connections", gauge) or 0
        url = ws_url(relay, f"token={tok}")
        async with connect(url, sock=raw, max_queue=1, compression=None, close_timeout=1) as stalled:
            assert (await recv(stalled))["type"] == "connected"
            assert REGISTRY.get_sample_value("relay_ws_connections", gauge) == start + 1
            conn = await asyncpg.connect(db_url)
            await conn.execute(
                """INSERT INTO "Booking" (id, "merchantId", status)
                   SELECT 'b' || i, 'mA', 'PENDING' FROM generate_series(1, 3000) AS i"""
            )
            await conn.close()
            async with asyncio.timeout(10):
                while REGISTRY.get_sample_value("relay_ws_connections", gauge) != start:
                    await asyncio.sleep(0.05)
            assert relay.hub.room_size("mA") == 0
