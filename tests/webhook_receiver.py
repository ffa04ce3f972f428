"""A real webhook receiver on 127.0.0.1 for the tests and the benchmark (uvicorn + starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: the test (or benchmark) decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]

Responder = Callable[[Received], Awaitable[Response]]


async def answer_204(_received: Received) -> Response:
    return Response(status_code=204)


class Receiver:
    """Records every POST in ``received`` (a queue) and answers with ``respond``."""

    def __init__(self, respond: Responder = answer_204, **uvicorn_options: Any) -> None:
        self.respond = respond
        self._options = uvicorn_options
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self.all: list[Received] = []
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: Request) -> Response:
        item = Received(request.url.path, dict(request.headers), await request.body())
        self.all.append(item)
        self.received.put_nowait(item)
        return await self.respond(item)

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="off",
            access_log=False,
            **self._options,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
            self._server = None

    async def get(self, within: float = 10.0) -> Received:
        return await asyncio.wait_for(self.received.get(), within)

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.received.get(), seconds)
        except TimeoutError:
            return True
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running(respond: Responder = answer_204) -> AsyncIterator[Receiver]:
    receiver = Receiver(respond)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def write_bookings(db_url: str, *statements: str) -> None:
    """Run booking writes (each in its own transaction) as the application would."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def booking(booking_id: str, merchant: str, status: str = "PENDING") -> str:
    values = f"('{booking_id}', '{merchant}', '{status}')"
    return f"""INSERT INTO "Booking" (id, "merchantId", status) VALUES {values}"""


@contextlib.asynccontextmanager
async def running_dispatcher(
    db_url: str, *, schedule: str = "0,100ms,100ms", send_timeout: float = 15.0, **kwargs: Any
) -> AsyncIterator[Any]:
    """A dispatcher with the webhook destination and the feed that sequences its events, without
    the rest of the relay."""
    from relay.db import create_pool
    from relay.dispatcher import Dispatcher
    from relay.egress import build_client
    from relay.feed import Feed
    from relay.retry import RetrySchedule
    from relay.store import Store
    from relay.webhooks.sender import WebhookDestination

    pool = await create_pool(db_url)
    stop = asyncio.Event()
    try:
        async with build_client(LOOPBACK) as client:
            store = Store(pool)
            destination = WebhookDestination(store, client, timeout=send_timeout, stop=stop)
            kwargs.setdefault("poll_interval", 0.2)
            dispatcher = Dispatcher(store, [destination], RetrySchedule.parse(schedule), **kwargs)
            feed = Feed(store, reconcile_interval=0.05)  # polls: no listener wakes it here
            feed.subscribe(lambda _events: dispatcher.wake())
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(dispatcher.plan_loop(stop))
                tasks.create_task(dispatcher.deliver_loop(stop))
                await dispatcher.started.wait()
                tasks.create_task(feed.run(stop))  # after the planner's cursors exist
                try:
                    yield dispatcher
                finally:
                    stop.set()
    finally:
        await pool.close()


async def delivery_rows(db_url: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT * FROM relay.deliveries ORDER BY id")
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def wait_rows(
    db_url: str, done: Callable[[list[dict[str, Any]]], bool], seconds: float = 15.0
) -> list[dict[str, Any]]:
    """Poll relay.deliveries until ``done(rows)``."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await delivery_rows(db_url)
        if done(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries never reached the expected state: {rows}")
        await asyncio.sleep(0.05)


class RelayProcess:
    """``relay run`` in a subprocess (for crash and multi-process tests)."""

    def __init__(self, db_url: str, log_path: Any, **env: str) -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        environ = {
            **os.environ,
            "DATABASE_URL": db_url,
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": str(self.port),
            "RELAY_EGRESS_ALLOW": "127.0.0.0/8",
            "RELAY_PROBE_INTERVAL": "0.5",
            **env,
        }
        self._log = open(log_path, "ab")  # closed by kill() / stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"], env=environ, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def ready(self, within: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"relay run exited with {self.proc.returncode}")
                try:
                    response = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("relay run never became ready")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    async def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
        self._log.close()
        return int(self.proc.wait(5))
