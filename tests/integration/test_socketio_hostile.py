"""Socket.IO under hostile clients: bounded requests, malformed packets, no token in time."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.app import Relay
from relay.config import Settings
from tests.integration.livekit import live_settings, running, token
from tests.support import sample


def eio_url(relay: Relay, scheme: str = "ws", query: str = "") -> str:
    transport = "websocket" if scheme == "ws" else "polling"
    return f"{scheme}://127.0.0.1:{relay.http_port}/socket.io/?EIO=4&transport={transport}{query}"


def refused(reason: str) -> float:
    return sample("relay_live_refused_total", {"transport": "socketio", "reason": reason})


async def closed_with(ws: ClientConnection, wait: float = 5.0) -> int | None:
    """Read until the relay closes the connection; its close code."""
    async with asyncio.timeout(wait):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


async def connect_namespace(ws: ClientConnection, tok: str) -> None:
    await ws.send("40/notifications," + json.dumps({"token": tok}))
    assert str(await ws.recv()).startswith("40/notifications,{")


class Polling:
    """An Engine.IO long-polling session, by hand."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.sid = ""

    async def open(self) -> None:
        opened = await self.client.get(self.url)
        self.sid = json.loads(opened.text[1:])["sid"]

    async def post(self, body: str | bytes, *, chunked: bool = False) -> httpx.Response:
        data = body.encode() if isinstance(body, str) else body

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        return await self.client.post(f"{self.url}&sid={self.sid}", content=chunks() if chunked else data)

    async def poll(self) -> httpx.Response:
        return await self.client.get(f"{self.url}&sid={self.sid}")

    async def ended(self) -> bool:
        """True when the relay has closed the session: a long-poll answered with an Engine.IO
        CLOSE packet, or 400 for a session that is gone (a live one would wait ~25 s)."""
        answer = await self.poll()
        return answer.text == "1" or answer.status_code == 400


@pytest.fixture
async def polling() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:  # an unanswered request fails the test
        yield client


async def test_an_oversized_long_polling_post_is_answered_413_at_once(
    db_url: str, polling: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings = live_settings(db_url)
    before = refused("too_large")
    async with running(settings) as relay:
        session = Polling(polling, eio_url(relay, "http"))
        await session.open()
        # before a valid CONNECT: 8 KiB
        too_big = await session.post("4" + "a" * 70_000)
        assert too_big.status_code == 413
        assert "error" in too_big.json()
        big_event = '42/notifications,["subscribe","' + "x" * 9_000 + '"]'
        assert (await session.post(big_event)).status_code == 413
        assert (await session.post(big_event, chunked=True)).status_code == 413
        connect_packet = "40/notifications," + json.dumps({"token": token(settings, "mA")})
        assert (await session.post(connect_packet, chunked=True)).status_code == 200
        assert "40/notifications," in (await session.poll()).text
        # connected: 64 KiB
        event = '42/notifications,["subscribe","' + "x" * 20_000 + '"]'
        assert (await session.post(event)).status_code == 200
        assert (await session.post("4" + "a" * 70_000)).status_code == 413
    assert refused("too_large") - before == 4
    assert "did not stop" not in caplog.text


@pytest.mark.parametrize(
    "packet",
    ["", "42/notifications,[", "9", "4", b"\x00\x01", '42/notifications,{"a":1}', "4" + "[" * 5_000],
    ids=["empty", "broken-json", "unknown-type", "no-socketio-packet", "binary", "event-not-a-list", "deep"],
)
async def test_a_malformed_packet_closes_the_websocket_with_one_line_and_no_traceback(
    db_url: str, caplog: pytest.LogCaptureFixture, packet: str | bytes
) -> None:
    caplog.set_level(logging.INFO)
    before = refused("malformed")
    async with running(live_settings(db_url)) as relay:
        for _ in range(2):
            async with connect(eio_url(relay)) as ws:
                await ws.recv()
                await ws.send(packet)
                assert await closed_with(ws) == 1008
        # the relay goes on serving
        async with connect(eio_url(relay)) as ws:
            await ws.recv()
            await connect_namespace(ws, token(relay.settings, "mA"))
    assert refused("malformed") - before == 2
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if "refused malformed" in r.getMessage()]
    assert len(lines) == 1  # the second is held back (counted, not logged)
    assert "\n" not in lines[0].getMessage()


async def test_a_malformed_long_polling_post_is_refused_400_and_ends_the_session(
    db_url: str, polling: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = refused("malformed")
    async with running(live_settings(db_url)) as relay:
        for body in ("", "42/notifications,[", "2", b"\xff\xfe", "2probe"):
            session = Polling(polling, eio_url(relay, "http"))
            await session.open()
            answer = await session.post(body)
            assert answer.status_code == 400
            assert "malformed" in answer.json()["error"]
            assert await session.ended()
    assert refused("malformed") - before == 5
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def quick_auth(db_url: str) -> Settings:
    return live_settings(db_url, auth_timeout=0.5)


async def test_a_session_without_a_valid_connect_is_closed_after_the_auth_timeout(
    db_url: str, polling: httpx.AsyncClient
) -> None:
    settings = quick_auth(db_url)
    before = refused("auth_timeout")
    async with running(settings) as relay:
        async with (
            connect(eio_url(relay)) as silent,
            connect(eio_url(relay)) as forged,
            connect(eio_url(relay)) as good,
        ):
            for ws in (silent, forged, good):
                await ws.recv()
            await forged.send('40/notifications,{"token":"not.a.jwt"}')
            assert str(await forged.recv()).startswith("44/notifications,")  # CONNECT_ERROR
            await connect_namespace(good, token(settings, "mA"))
            session = Polling(polling, eio_url(relay, "http"))
            await session.open()

            assert await closed_with(silent) is not None
            assert await closed_with(forged) is not None
            assert await session.ended()
            # a client that connected in time stays
            await good.send('42/notifications,["subscribe","booking_created"]')
            async with asyncio.timeout(5):
                while '["subscribed"' not in str(await good.recv()):
                    pass
    assert refused("auth_timeout") - before == 3


async def test_messages_are_limited_to_8_kib_until_the_connect_and_64_kib_after(db_url: str) -> None:
    settings = live_settings(db_url)
    event = '42/notifications,["subscribe","' + "x" * 9_000 + '"]'  # a well-formed 9 KB packet
    async with running(settings) as relay:
        async with connect(eio_url(relay), max_size=None) as ws:
            await ws.recv()
            await ws.send(event)
            assert await closed_with(ws) == 1009
        async with connect(eio_url(relay), max_size=None) as ws:
            await ws.recv()
            await connect_namespace(ws, token(settings, "mA"))
            await ws.send(event)
            answers = [str(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            assert any('"error"' in answer and "unknown channel" in answer for answer in answers), answers
            await ws.send('42/notifications,["subscribe","' + "x" * 70_000 + '"]')
            assert await closed_with(ws) == 1009
