"""The composition root: open every resource, start every loop, stop them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import uvicorn

from relay import metrics
from relay.auth import TokenVerifier
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS, create_pool
from relay.events import Event
from relay.feed import Feed
from relay.listener import Listener
from relay.live import Hub
from relay.wire import LiveWebSocketProtocol

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0


@dataclass
class Relay:
    """What a running relay holds; handed to the HTTP routes and to tests."""

    settings: Settings
    pool: asyncpg.Pool
    feed: Feed
    listener: Listener
    verifier: TokenVerifier | None = None
    live: Hub = field(default_factory=Hub)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int | None = None

    async def readiness_problems(self) -> list[str]:
        problems = []
        if not self.listener.connected.is_set():
            problems.append("listener not connected")
        try:
            async with asyncio.timeout(2):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            problems.append(f"database not answering ({type(exc).__name__})")
        return problems

    async def refresh_gauges(self) -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
            async with asyncio.timeout(2):
                async with self.pool.acquire() as conn:
                    usage = await conn.fetchval("SELECT pg_notification_queue_usage()")
            metrics.notify_queue_usage.set(float(usage))


def log_events(events: Sequence[Event]) -> None:
    """The consumer of last resort: one structured log line per event."""
    for event in events:
        logger.info(
            "event %s %s booking=%s",
            event.cursor,
            event.channel,
            event.data.get("id"),
            extra={"event_id": event.id, "channel": event.channel, "merchant_id": event.merchant_id},
        )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the relay decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@contextlib.asynccontextmanager
async def start(settings: Settings, *, serve_http: bool = True) -> AsyncIterator[Relay]:
    """Run a relay in the background for the duration of the ``async with`` block."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.require_database_url())
        stack.push_async_callback(_close_pool, pool)
        feed = Feed(pool, reconcile_interval=settings.reconcile_interval)
        listener = Listener(
            settings.listen_url,
            on_notify=feed.notified,
            on_connect=feed.wake,
            probe_interval=settings.probe_interval,
            probe_timeout=settings.probe_timeout,
            max_delay=settings.reconnect_max_delay,
        )
        verifier = TokenVerifier(settings) if settings.jwt_enabled else None
        if verifier is None:
            logger.warning("token routes are off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY")
        relay = Relay(settings=settings, pool=pool, feed=feed, listener=listener, verifier=verifier)
        feed.subscribe(log_events)
        feed.subscribe(relay.live.publish)

        server: _Server | None = None
        if serve_http:
            from relay.http import build_app

            config = uvicorn.Config(
                build_app(relay),
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                lifespan="off",
                ws=LiveWebSocketProtocol,
                ws_ping_interval=20,
                ws_ping_timeout=20,
            )
            server = _Server(config)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(feed.run(relay.stop), name="relay-feed")
            tasks.create_task(listener.run(relay.stop), name="relay-listener")
            if server is not None:
                tasks.create_task(server.serve(), name="relay-http")
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                    await asyncio.sleep(0.01)
                relay.http_port = server.servers[0].sockets[0].getsockname()[1]
            try:
                yield relay
            finally:
                relay.stop.set()
                if server is not None:
                    server.should_exit = True
                logger.info("relay stopping")


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), SHUTDOWN_GRACE)
    except TimeoutError:
        pool.terminate()


async def run(settings: Settings) -> None:
    """`relay run`: serve until SIGTERM or SIGINT, then stop gracefully."""
    import signal

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with start(settings) as relay:
        logger.info("relay running; HTTP on %s:%s", settings.http_host, relay.http_port)
        await stopping.wait()
