"""The composition root: open every resource, start every loop, stop them in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.routing import BaseRoute

from relay import logs, metrics
from relay.auth import TokenVerifier
from relay.channels.base import Channel
from relay.channels.webhook import WebhookChannel
from relay.channels.webpush import WebPushChannel, prune_push_subscriptions
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS, create_pool
from relay.dispatcher import Dispatcher
from relay.egress import Resolver, SystemResolver, build_client
from relay.events import Event
from relay.feed import Feed
from relay.listener import Listener
from relay.live import UNAUTHENTICATED_MAX_MESSAGE, Hub
from relay.scheduler import build_scheduler
from relay.webhooks import disable_failing_endpoints
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
    push: WebPushChannel | None = None
    live: Hub = field(default_factory=Hub)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int | None = None
    http_client: httpx.AsyncClient | None = None
    dispatcher: Dispatcher | None = None
    # Host name lookups for outgoing requests and for the routes' checks of a destination.
    resolver: Resolver = field(default_factory=SystemResolver)

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
        metrics.listener_connected.set(1 if self.listener.connected.is_set() else 0)
        with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
            async with asyncio.timeout(2):
                async with self.pool.acquire() as conn:
                    usage = await conn.fetchval("SELECT pg_notification_queue_usage()")
            metrics.notify_queue_usage.set(float(usage))


def log_events(events: Sequence[Event]) -> None:
    """One structured log line per event (at DEBUG: the channels log what they deliver)."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    for event in events:
        logger.debug(
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
async def start(
    settings: Settings,
    *,
    serve_http: bool = True,
    extra_routes: list[BaseRoute] | None = None,
    resolver: Resolver | None = None,
) -> AsyncIterator[Relay]:
    """Run a relay in the background for the duration of the ``async with`` block.

    ``resolver`` replaces the system's name servers (tests use it for names that do not
    answer); every lookup is still bounded by ``RELAY_DNS_TIMEOUT``.
    """
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(
            settings.require_database_url(), pooler=settings.database_pooler, listen_dsn=settings.listen_url
        )
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
        if resolver is None:
            system = SystemResolver()
            stack.push_async_callback(system.aclose)
            resolver = system
        relay = Relay(
            settings=settings, pool=pool, feed=feed, listener=listener, verifier=verifier, resolver=resolver
        )
        feed.subscribe(relay.live.publish)  # first: live pages are the latency-critical consumer
        feed.subscribe(log_events)
        # One SSRF-guarded client for every outgoing request (webhooks, push).
        http_client = await stack.enter_async_context(
            build_client(settings.egress_allow, resolver=resolver, dns_timeout=settings.dns_timeout)
        )
        channels: list[Channel] = [
            WebhookChannel(pool, http_client, timeout=settings.webhook_timeout, stop=relay.stop)
        ]
        if settings.push_enabled:
            # Raises ConfigError (one line naming the variable) for a malformed key or subject.
            relay.push = WebPushChannel(settings, pool, http_client)
            channels.append(relay.push)
        else:
            logger.warning("Web Push is off: set RELAY_VAPID_PRIVATE_KEY (see `relay vapid-keys`)")
        dispatcher = Dispatcher(
            pool,
            channels,
            settings.retry_schedule,
            per_merchant=settings.sends_per_merchant,
            per_host=settings.sends_per_host,
            lease=settings.delivery_lease,
            grace=SHUTDOWN_GRACE - 1,
        )
        feed.subscribe(lambda _events: dispatcher.wake())
        relay.http_client = http_client
        relay.dispatcher = dispatcher
        scheduler = build_scheduler(
            relay,
            disable_failing_endpoints=disable_failing_endpoints,
            prune_push_subscriptions=prune_push_subscriptions if relay.push is not None else None,
        )
        scheduler.start()
        stack.push_async_callback(scheduler.stop)

        server: _Server | None = None
        if serve_http:
            from relay.http import build_app

            logs.guard_library_loggers()  # uvicorn logs every handshake with its query string
            config = uvicorn.Config(
                build_app(relay, extra_routes),
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                lifespan="off",
                ws=LiveWebSocketProtocol,
                # Every WebSocket starts with the smallest limit; routes raise it once the
                # client has authenticated (Socket.IO) or lower it (/ws).
                ws_max_size=UNAUTHENTICATED_MAX_MESSAGE,
                ws_ping_interval=20,
                ws_ping_timeout=20,
            )
            server = _Server(config)

        async with asyncio.TaskGroup() as tasks:
            loops = [
                tasks.create_task(feed.run(relay.stop), name="relay-feed"),
                tasks.create_task(listener.run(relay.stop), name="relay-listener"),
                tasks.create_task(dispatcher.plan_loop(relay.stop), name="relay-dispatch-plan"),
                tasks.create_task(dispatcher.deliver_loop(relay.stop), name="relay-dispatch-deliver"),
            ]
            if server is not None:
                loops.append(tasks.create_task(server.serve(), name="relay-http"))
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
                await asyncio.gather(scheduler.stop(), _drain(loops, SHUTDOWN_GRACE))


async def _drain(loops: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Give the loops ``grace`` seconds to notice the stop event, then cancel the rest
    (e.g. one stuck connecting to a database host that does not answer)."""
    _done, pending = await asyncio.wait(loops, timeout=grace)
    for task in pending:
        logger.warning("%s did not stop within %.0fs; cancelling it", task.get_name(), grace)
        task.cancel()


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), SHUTDOWN_GRACE)
    except TimeoutError:
        pool.terminate()


def tune_garbage_collector() -> None:
    """Fewer, larger young-generation collections, and start-up objects left out of them.

    With thousands of live connections CPython's default thresholds run full collections
    often enough to stall the event loop for hundreds of milliseconds at a time; measured
    with 5,000 /ws clients at 200 events/s (bench/load.py), these settings halve the p99
    commit->client latency. Only objects that live for the whole process are frozen.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run(settings: Settings) -> None:
    """`relay run`: serve until SIGTERM or SIGINT, then stop gracefully."""
    import signal

    tune_garbage_collector()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with start(settings) as relay:
        logger.info("relay running; HTTP on %s:%s", settings.http_host, relay.http_port)
        await stopping.wait()
