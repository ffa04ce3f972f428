"""One merchant's unreachable destinations must not delay another merchant's deliveries.

A merchant registers 1,000 push subscriptions on destinations that cannot be reached:
a host name whose name server never answers, or a server that accepts connections and
never answers. While one of its bookings is being tried on all of them, another
merchant's webhook must still arrive at once, and its HTTP requests must still be
answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from relay import app
from relay.auth import mint_token
from relay.egress import SystemResolver
from relay.push.vapid import generate_key_pair
from relay.quota import AHEAD
from relay.store import Store
from relay.webhooks.endpoints import add_endpoint
from tests.conftest import make_settings
from tests.pushservice import Browser
from tests.webhook_receiver import LOOPBACK, running

PRIVATE, _PUBLIC = generate_key_pair()
SUBSCRIPTIONS = 1000
STUCK = ".stuck.test"


class StuckNameServer:
    """Names under ``.stuck.test`` go to a name server that never answers, and each lookup
    of one blocks a thread of the event loop's default executor the way ``getaddrinfo``
    does (until the test ends). Other names go to the system's resolver."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0
        self.most_waiting = 0
        self._system = SystemResolver()

    async def __call__(self, host: str, port: int) -> list[str]:
        if not host.endswith(STUCK):
            return await self._system(host, port)
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 60)
        finally:
            self.waiting -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    async def aclose(self) -> None:
        self.release.set()
        await self._system.aclose()


class SilentServer:
    """Accepts TCP connections and never answers on them."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while await reader.read(65536):  # until the client gives up
                pass
        finally:
            self.open -= 1
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentServer]:
        server = await asyncio.start_server(self._hold, "127.0.0.1", 0, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            await server.wait_closed()


async def _subscribe_flood(conn: asyncpg.Connection, base: str) -> None:
    browser = Browser()
    keys = browser.subscription("")["keys"]
    await conn.executemany(
        """INSERT INTO relay.push_subscriptions (merchant_id, user_id, endpoint, p256dh, auth)
           VALUES ('flood', 'u1', $1, $2, $3)""",
        [(f"{base}/push/{i}", keys["p256dh"], keys["auth"]) for i in range(SUBSCRIPTIONS)],
    )


async def _until(condition: object, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("the flood never got going")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("unreachable", ["name server never answers", "server never answers"])
async def test_another_merchants_webhook_arrives_at_once_while_a_merchant_floods_unreachable_destinations(
    db_url: str, unreachable: str
) -> None:
    settings = make_settings(
        db_url,
        jwt_secret="test-secret-test-secret-test-secret",
        vapid_private_key=PRIVATE,
        vapid_subject="mailto:ops@example.com",
        egress_allow="127.0.0.0/8",
    )
    names = StuckNameServer()
    silent = SilentServer()
    conn = await asyncpg.connect(db_url)
    try:
        async with silent.running(), running() as receiver:
            if unreachable == "name server never answers":
                await _subscribe_flood(conn, f"https://push{STUCK}")

                def trying() -> int:
                    return names.waiting
            else:
                await _subscribe_flood(conn, f"http://127.0.0.1:{silent.port}")

                def trying() -> int:
                    return silent.open

            await add_endpoint(Store(conn), merchant_id="calm", url=receiver.url(), allow=LOOPBACK)
            async with app.start(settings, resolver=names) as relay:
                assert relay.dispatcher is not None
                await relay.dispatcher.started.wait()
                await conn.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ('f1', 'flood', 'P')"""
                )
                await _until(lambda: trying() >= 20)

                await conn.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ('c1', 'calm', 'P')"""
                )
                got = await receiver.get(within=1.0)  # its normal latency is a few ms
                assert got.json["data"]["id"] == "c1"

                # The calm merchant's requests are answered at once too.
                token = mint_token(settings, merchant_id="calm", user_id="u1")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
                    async with asyncio.timeout(1.0):
                        subscribed = await http.post(
                            "/push/subscriptions",
                            json=Browser().subscription(f"http://127.0.0.1:{receiver.port}/push/calm"),
                            headers={"Authorization": f"Bearer {token}"},
                        )
                assert subscribed.status_code == 201, subscribed.text

                # The flood holds no more than its share; the rest waits, unclaimed and due.
                held = await conn.fetchval(
                    "SELECT count(*) FROM relay.deliveries WHERE merchant_id = 'flood' AND state = 'sending'"
                )
                assert held <= AHEAD * settings.sends_per_merchant
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM relay.deliveries WHERE merchant_id = 'flood' AND state = 'pending'"
                )
                assert waiting >= SUBSCRIPTIONS - 4 * settings.sends_per_merchant
        assert max(names.most_waiting, silent.most_open) <= settings.sends_per_merchant
    finally:
        await names.aclose()
        await conn.close()
