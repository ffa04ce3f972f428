from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.livekit import live_settings, running, small_window_socket, token
from tests.integration.test_socketio_gateway import sio_client

EVENTS = 5000
BATCH = 1000  # one feed batch


async def test_socketio_websocket_client_that_stops_reading_is_closed_while_others_keep_receiving(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        relay.hub.max_buffer = 256 * 1024  # one batch fits; a growing backlog does not
        tok = token(settings, "mA")
        raw = await small_window_socket(relay)
        url = f"ws://127.0.0.1:{relay.http_port}/socket.io/?EIO=4&transport=websocket"
        async with (
            connect(url, sock=raw, max_queue=1, compression=None) as slow,
            sio_client(relay, tok, transports=["websocket"]) as fast,
        ):
            assert (await slow.recv()).startswith("0{")  # Engine.IO open
            await slow.send("40/notifications," + json.dumps({"token": tok}))
            assert (await slow.recv()).startswith("40/notifications,")
            assert "connected" in await slow.recv()  # then it stops reading
            assert (await fast.next())[0] == "connected"
            # Batch after batch, each read in full by the fast client before the next is
            # committed: the fast client never falls behind, the slow one's backlog grows.
            conn = await asyncpg.connect(db_url)
            ids = []
            for start in range(1, EVENTS + 1, BATCH):
                await conn.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status)
                       SELECT 'b' || i, 'mA', 'PENDING' FROM generate_series($1::int, $2::int) AS i""",
                    start,
                    start + BATCH - 1,
                )
                ids += [(await fast.next())[1]["id"] for _ in range(BATCH)]
            await conn.close()
            assert ids == [f"b{i}" for i in range(1, EVENTS + 1)]
            assert relay.hub.room_size("mA") == 1
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(slow.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
