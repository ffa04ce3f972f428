"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from starlette.routing import BaseRoute

from relay import app
from relay.config import Settings
from relay.db import create_pool
from relay.egress import SystemResolver
from relay.events import Event
from relay.metrics import REGISTRY


class Collector:
    """A feed consumer that records every event it is handed, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self._changed.set()

    def booking_ids(self) -> list[str]:
        return [str(e.data.get("id")) for e in self.events]

    async def wait_for(self, booking_ids: Iterable[str], timeout: float = 10.0) -> None:
        """Wait until every booking id has been handed on (at least once)."""
        wanted = set(booking_ids)
        async with asyncio.timeout(timeout):
            while not wanted <= set(self.booking_ids()):
                self._changed.clear()
                await self._changed.wait()

    async def wait_count(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[app.Relay, Collector]]:
    """An in-process relay (no HTTP) with a collector on its feed, listening."""
    async with app.start(settings, serve_http=False) as relay:
        collector = Collector()
        relay.feed.subscribe(collector)
        async with asyncio.timeout(10):
            await relay.feed.started.wait()
            await relay.listener.connected.wait()
        yield relay, collector


async def insert_booking(
    conn: asyncpg.Connection, booking_id: str, merchant: str = "m1", **extra: str
) -> None:
    await conn.execute(
        """INSERT INTO "Booking" (id, "merchantId", status, notes) VALUES ($1, $2, $3, $4)""",
        booking_id,
        merchant,
        extra.get("status", "PENDING"),
        extra.get("notes"),
    )


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def http_routes(settings: Settings) -> list[BaseRoute]:
    """Every route of the ASGI app a relay with ``settings`` serves (building it opens nothing:
    the pool connects lazily)."""

    async def build() -> Any:
        pool = await create_pool(settings.require_database_url())
        try:
            return app.http_app(app.build_services(settings, pool, SystemResolver()))
        finally:
            await pool.close()

    asgi = asyncio.run(build())
    # Unwrap the ASGI layers around the Starlette app (send capture, Socket.IO).
    while not hasattr(asgi, "routes"):
        asgi = getattr(asgi, "app", None) or asgi.other_asgi_app
    routes: list[BaseRoute] = asgi.routes
    return routes
