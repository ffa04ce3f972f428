from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio

from relay.app import Relay
from tests.integration.livekit import insert, live_settings, running, token


class Client:
    """A python-socketio client that records every event of /notifications."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, http_session=session)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sio.on("*", self._record, namespace="/notifications")

    async def _record(self, event: str, data: Any = None, *_offset: Any) -> None:
        self.events.put_nowait((event, data))

    async def next(self, wait: float = 5.0) -> tuple[str, Any]:
        return await asyncio.wait_for(self.events.get(), wait)

    async def nothing_more(self, wait: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(self.events.get(), wait)
            raise AssertionError(f"unexpected {got!r}")


@contextlib.asynccontextmanager
async def sio_client(relay: Relay, tok: str | None, **kw: Any) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:  # closed even when connecting fails
        client = Client(session)
        await client.sio.connect(
            f"http://127.0.0.1:{relay.http_port}",
            namespaces=["/notifications"],
            auth={"token": tok} if tok else None,
            wait_timeout=5,
            **kw,
        )
        try:
            yield client
        finally:
            await client.sio.disconnect()


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
async def test_socketio_client_gets_connected_and_only_its_merchants_bookings(
    db_url: str, transports: list[str]
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with (
            sio_client(relay, token(settings, "mA", user="ua"), transports=transports) as a,
            sio_client(relay, token(settings, "mB", user="ub"), transports=transports) as b,
        ):
            assert await a.next() == ("connected", {"userId": "ua", "merchantId": "mA"})
            assert await b.next() == ("connected", {"userId": "ub", "merchantId": "mB"})
            # websocket clients get prebuilt frames; polling ones the same packet via their queue
            assert [s.direct for s in relay.hub.sinks("mA")] == [transports == ["websocket"]]
            await insert(db_url, ("b-b1", "mB"), ("b-a1", "mA"), ("b-a2", "mA"))
            event, data = await a.next()
            assert event == "booking_created"
            assert data["id"] == "b-a1"
            assert set(data) == {"id", "merchantId", "status", "operation", "eventId"}
            assert (await a.next())[1]["id"] == "b-a2"
            assert (await b.next())[1]["id"] == "b-b1"
            await a.nothing_more()
            await b.nothing_more()


@pytest.mark.parametrize("bad", [None, "not.a.jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0."])
async def test_socketio_refuses_bad_tokens(db_url: str, bad: str | None) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        with pytest.raises(socketio.exceptions.ConnectionError):
            async with sio_client(relay, bad, transports=["websocket"]):
                pass


async def test_socketio_accepts_the_authorization_header_like_the_seed(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        headers = {"Authorization": f"Bearer {token(settings, 'mA')}"}
        async with sio_client(relay, None, headers=headers, transports=["websocket"]) as a:
            assert (await a.next())[0] == "connected"


async def test_socketio_subscribe_to_another_merchant_is_refused(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with sio_client(relay, token(settings, "mA"), transports=["websocket"]) as a:
            await a.next()
            await a.sio.emit("subscribe", {"channel": "merchant:mB"}, namespace="/notifications")
            event, data = await a.next()
            assert event == "error"
            assert "merchant" in data["message"]
            await insert(db_url, ("b-b1", "mB"))
            await a.nothing_more()
            await a.sio.emit("subscribe", {"channel": "merchant:mA"}, namespace="/notifications")
            assert await a.next() == ("subscribed", {"channel": "merchant:mA"})
            await a.sio.emit("unsubscribe", {"channel": "merchant:mA"}, namespace="/notifications")
            assert await a.next() == ("unsubscribed", {"channel": "merchant:mA"})
            await insert(db_url, ("b-a1", "mA"))
            await a.nothing_more()


async def test_socketio_client_is_disconnected_when_its_token_expires(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with sio_client(relay, token(settings, "mA", ttl=2), transports=["websocket"]) as a:
            gone: asyncio.Event = asyncio.Event()
            a.sio.on("disconnect", lambda *_: gone.set(), namespace="/notifications")
            await asyncio.wait_for(gone.wait(), 10)


async def test_socketio_refuses_a_foreign_origin_unless_allowed(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        evil = {"Origin": "http://evil.example"}
        with pytest.raises(socketio.exceptions.ConnectionError):
            async with sio_client(relay, token(settings, "mA"), headers=evil, transports=["websocket"]):
                pass
    settings = live_settings(db_url, allowed_origins="http://evil.example")
    async with running(settings) as relay:
        async with sio_client(relay, token(settings, "mA"), headers=evil, transports=["websocket"]) as a:
            assert (await a.next())[0] == "connected"
