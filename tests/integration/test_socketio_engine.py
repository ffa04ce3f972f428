"""The Engine.IO server of relay/live/eio.py on its own (short ping intervals): the heartbeat
ends a client that stops answering and keeps one that answers, on either transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.types import Scope
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.live.eio import Engine, Message, Session
from relay.live.wire import LiveWebSocketProtocol, ServerWithoutSignals

INTERVAL, TIMEOUT = 0.2, 0.3


class Application:
    """Takes every CONNECT; records the sessions the engine ends."""

    def __init__(self) -> None:
        self.ended: asyncio.Queue[str] = asyncio.Queue()

    async def message(self, session: Session, message: Message, scope: Scope) -> None:
        session.accept(message)

    def closed(self, session: Session) -> None:
        self.ended.put_nowait(session.sid)

    def refuse(self, reason: str, client: object, detail: str) -> None:
        raise AssertionError(f"refused {reason}: {detail}")


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Application, str]]:
    application = Application()
    engine = Engine(
        application,
        [],
        auth_timeout=60,
        first_message=8192,
        max_message=65536,
        socket_buffer=131072,
        ping_interval=INTERVAL,
        ping_timeout=TIMEOUT,
    )
    config = uvicorn.Config(
        engine, host="127.0.0.1", port=0, ws=LiveWebSocketProtocol, lifespan="off", log_config=None
    )
    server = ServerWithoutSignals(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield application, f"127.0.0.1:{port}/socket.io/?EIO=4"
    finally:
        server.should_exit = True
        await task


def opened(text: str) -> dict[str, Any]:
    assert text.startswith("0"), text
    hello: dict[str, Any] = json.loads(text[1:])
    return hello


async def test_a_websocket_client_that_answers_pings_stays_and_one_that_does_not_is_ended() -> None:
    async with serving() as (application, base):
        async with (
            connect(f"ws://{base}&transport=websocket") as answering,
            connect(f"ws://{base}&transport=websocket") as silent,
        ):
            hello = opened(str(await answering.recv()))
            assert (hello["pingInterval"], hello["pingTimeout"], hello["upgrades"]) == (200, 300, [])
            silent_sid = opened(str(await silent.recv()))["sid"]
            loop = asyncio.get_running_loop()
            until = loop.time() + 4 * (INTERVAL + TIMEOUT)
            pings = 0
            while loop.time() < until:
                assert await asyncio.wait_for(answering.recv(), INTERVAL + TIMEOUT) == "2"
                await answering.send("3")
                pings += 1
            assert pings >= 4
            assert await asyncio.wait_for(application.ended.get(), 1) == silent_sid
            received = []
            try:
                while True:
                    received.append(await asyncio.wait_for(silent.recv(), 2))
            except ConnectionClosed:
                pass
            assert received == ["2", "1"]  # a ping, then CLOSE when no pong came
            assert application.ended.empty()


async def test_a_long_polling_client_gets_pings_by_poll_and_is_ended_when_it_stops_answering() -> None:
    async with serving() as (application, base), httpx.AsyncClient(timeout=5) as client:
        url = f"http://{base}&transport=polling"
        hello = opened((await client.get(url)).text)
        assert hello["upgrades"] == ["websocket"]
        session = f"{url}&sid={hello['sid']}"
        for _ in range(3):
            assert (await client.get(session)).text == "2"  # the poll waits for the ping
            assert (await client.post(session, content=b"3")).text == "ok"
        assert (await client.get(session)).text == "2"
        assert await asyncio.wait_for(application.ended.get(), 2) == hello["sid"]
        assert (await client.get(session)).status_code == 400  # the session is gone
