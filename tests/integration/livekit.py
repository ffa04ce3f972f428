"""Helpers shared by the live-page tests (/ws, Socket.IO, /events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection, connect

from relay import app
from relay.app import Relay
from relay.auth import mint_token
from relay.config import Settings
from tests.conftest import make_settings

SECRET = "live-test-secret-0123456789abcdef0123456789"


def live_settings(db_url: str, **overrides: object) -> Settings:
    return make_settings(db_url, jwt_secret=SECRET, **overrides)


def token(settings: Settings, merchant: str, user: str = "u1", ttl: float = 120) -> str:
    return mint_token(settings, merchant_id=merchant, user_id=user, ttl=ttl)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Relay]:
    async with app.start(settings) as relay:
        await asyncio.wait_for(relay.feed.started.wait(), 10)
        await asyncio.wait_for(relay.listener.connected.wait(), 10)
        yield relay


def ws_url(relay: Relay, query: str) -> str:
    return f"ws://127.0.0.1:{relay.http_port}/ws?{query}"


@contextlib.asynccontextmanager
async def ws_client(
    relay: Relay, tok: str, since: str | None = None, **kw: Any
) -> AsyncIterator[ClientConnection]:
    query = f"token={tok}" + (f"&since={since}" if since is not None else "")
    async with connect(ws_url(relay, query), **kw) as ws:
        hello = await recv(ws)
        assert hello["type"] == "connected", hello
        online = await recv(ws)
        assert online["type"] == "presence", online
        yield ws


async def recv(ws: ClientConnection, wait: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), wait)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def nothing_more(ws: ClientConnection, wait: float = 0.5) -> None:
    with contextlib.suppress(TimeoutError):
        message = await asyncio.wait_for(ws.recv(), wait)
        raise AssertionError(f"unexpected message {message!r}")


async def insert(db_url: str, *bookings: tuple[str, str]) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for booking_id, merchant in bookings:
            await conn.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, $2, 'PENDING')""",
                booking_id,
                merchant,
            )
    finally:
        await conn.close()


async def small_window_socket(relay: Relay) -> socket.socket:
    """A connected client socket with a tiny receive window: a backlog stays on the server."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", relay.http_port))
    return raw
