from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.livekit import insert, live_settings, running, small_window_socket, token
from tests.integration.test_socketio_gateway import sio_client
from tests.integration.test_socketio_hostile import Polling, eio_url

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


async def test_a_polling_client_that_stops_polling_is_ended_without_a_disconnect_so_it_comes_back(
    db_url: str,
) -> None:
    # A Socket.IO DISCONNECT would stop socket.io-client for good ("io server disconnect");
    # an ended Engine.IO session makes it reconnect and recover what it missed.
    settings = live_settings(db_url)
    async with running(settings) as relay, httpx.AsyncClient(timeout=5) as client:
        relay.hub.max_pending = 5
        session = Polling(client, eio_url(relay, "http"))
        await session.open()
        await session.post("40/notifications," + json.dumps({"token": token(settings, "mA")}))
        received = ""
        while "connected" not in received:
            received += (await session.poll()).text
        await insert(db_url, *[(f"b{i}", "mA") for i in range(10)])  # the client does not poll
        answers = []
        for _ in range(3):
            answer = await session.poll()
            answers.append(answer.text)
            if answer.status_code == 400 or answer.text.endswith("1"):  # gone, or CLOSE
                break
        else:
            raise AssertionError(f"the session was not ended: {answers}")
        assert not any("41/notifications" in text for text in answers), answers
        assert relay.hub.room_size("mA") == 0
