"""The composition root: build the services, hand each part what it uses, start every loop, stop them.

Nothing else imports this module but the entry points (``relay.cli``, ``relay.demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import uvicorn
from prometheus_client import Gauge
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from relay import http, logs, metrics, openapi
from relay.aio import wait_any
from relay.auth import TokenVerifier
from relay.capture import CaptureMode, Leader, Work, poll_pass
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS, create_pool
from relay.destinations import Destination
from relay.dispatcher import Dispatcher
from relay.egress import Resolver, SystemResolver, build_client
from relay.events import Event, Sources
from relay.feed import Feed
from relay.listener import Listener
from relay.live import polling, presence, websocket
from relay.live.hub import UNAUTHENTICATED_MAX_MESSAGE, Hub
from relay.live.recovery import Recovery
from relay.live.socketio import Gateway
from relay.live.wire import CaptureSend, LiveWebSocketProtocol, ServerWithoutSignals
from relay.push import routes as push_routes
from relay.push.sender import WebPushDestination, WebPushSender
from relay.push.subscriptions import prune_subscriptions
from relay.push.vapid import VapidSigner
from relay.scheduler import build_scheduler
from relay.store import Store
from relay.wal import WalReader
from relay.webhooks import routes as webhook_routes
from relay.webhooks.endpoints import disable_failing_endpoints
from relay.webhooks.sender import WebhookDestination

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class Services:
    """What the routes, destinations and jobs are built from. Building them opens nothing."""

    settings: Settings
    store: Store
    hub: Hub
    feed: Feed
    listener: Listener
    poller: Leader
    wal: Leader
    verifier: TokenVerifier | None  # None: token routes answer 503 (no JWT key)
    signer: VapidSigner | None  # None: Web Push is off (no VAPID key)
    gateway: Gateway
    presence: presence.Presence
    resolver: Resolver  # host name lookups: outgoing requests, the routes' checks of a destination


def build_services(settings: Settings, pool: asyncpg.Pool, resolver: Resolver) -> Services:
    """Raises ConfigError (one line naming the variable) for a malformed VAPID key or subject."""
    store = Store(pool)
    verifier = TokenVerifier(settings) if settings.jwt_enabled else None
    if verifier is None:
        logger.warning("token routes are off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY")
    signer = VapidSigner.from_settings(settings) if settings.push_enabled else None
    if signer is None:
        logger.warning("Web Push is off: set RELAY_VAPID_PRIVATE_KEY (see `relay vapid-keys`)")
    sources, capture = Sources(), CaptureMode()  # kept current by the listener
    hub = Hub(sources)
    feed = Feed(store, capture=capture, reconcile_interval=settings.reconcile_interval)
    # A fixed port names the process's slot; port 0 (any free port) has none.
    slot = f"{socket.gethostname()}:{settings.http_port}" if settings.http_port else None
    online = presence.Presence(store, hub, lease=settings.presence_lease, slot=slot)

    def connected() -> None:
        feed.wake()
        online.resync()

    listener = Listener(
        settings.listen_url,
        sources=sources,
        load_sources=store.sources,
        capture=capture,
        load_capture=store.capture_mode,
        on_notify=feed.notified,
        on_wake=lambda sender: None if sender in (poller.backend_pid, wal.backend_pid) else feed.wake(),
        on_connect=connected,
        probe_interval=settings.probe_interval,
        probe_timeout=settings.probe_timeout,
        max_delay=settings.reconnect_max_delay,
        others={presence.CHANNEL: online.notified},
    )

    # Session-bound (their locks): on the listen URL, never the pool, which may be a pooler's.
    def leader(mode: str, work: Work, gauge: Gauge) -> Leader:
        return Leader(
            mode,
            settings.listen_url,
            capture,
            work,
            gauge=gauge,
            on_sequenced=feed.wake,  # this process's feed; NOTIFY relay_wake wakes the others'
            interval=settings.poll_interval,
            timeout=settings.probe_timeout,
            max_delay=settings.reconnect_max_delay,
        )

    poller = leader("poll", poll_pass(settings.probe_timeout), metrics.poller_leader)
    wal = leader("wal", WalReader(on_recorded=feed.wake), metrics.wal_leader)

    async def live_position() -> int:
        await feed.started.wait()
        assert feed.position is not None
        return feed.position

    gateway = Gateway(
        hub,
        verifier,
        settings.allowed_origins,
        settings.auth_timeout,
        store=store,
        recovery=Recovery.keyed_by(settings.jwt_secret or settings.jwt_public_key or ""),
        position=live_position,
        presence=online,
    )
    return Services(
        settings, store, hub, feed, listener, poller, wal, verifier, signer, gateway, online, resolver
    )


def http_app(services: Services, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The whole ASGI app: every package's routes, each handed only what it uses."""
    s = services
    settings = s.settings
    routes: list[BaseRoute] = [
        *push_routes.routes(
            s.store, s.verifier, s.signer.public_key if s.signer else None, settings, s.resolver
        ),
        *webhook_routes.routes(
            s.store, s.verifier, settings.egress_allow, settings.webhook_endpoints_per_merchant
        ),
        *websocket.routes(s.hub, s.store, s.verifier, settings.allowed_origins, s.presence),
        *presence.routes(s.presence, s.verifier),
        *polling.routes(s.store, s.verifier, s.feed.caught_up),
        *extra_routes,
    ]

    async def readiness() -> list[str]:
        return await readiness_problems(s.listener, s.store)

    async def refresh_gauges() -> None:
        metrics.listener_connected.set(1 if s.listener.connected.is_set() else 0)
        with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
            async with asyncio.timeout(2):
                metrics.notify_queue_usage.set(await s.store.notify_queue_usage())
                if s.listener.capture.mode == "wal":
                    slot = await s.store.wal_slot()
                    lost = slot is None or slot["wal_status"] == "lost"
                    metrics.wal_slot_lost.set(1 if lost else 0)
                    metrics.wal_slot_lag_bytes.set(0 if lost or slot is None else slot["lag_bytes"] or 0)
                    metrics.wal_slot_retained_bytes.set(
                        0 if lost or slot is None else slot["retained_bytes"] or 0
                    )

    app = http.build_app(
        routes,
        readiness=readiness,
        refresh_gauges=refresh_gauges,
        allowed_origins=settings.allowed_origins,
        api_document=openapi.document(),
    )
    return s.gateway.mount(CaptureSend(app))


async def readiness_problems(listener: Listener, store: Store) -> list[str]:
    problems = []
    if not listener.connected.is_set():
        problems.append("listener not connected")
    try:
        async with asyncio.timeout(2):
            await store.ping()
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        problems.append(f"database not answering ({type(exc).__name__})")
    return problems


@dataclass(frozen=True)
class Relay:
    """A running relay, as ``start`` hands it to its caller (the CLI, the demo, tests)."""

    settings: Settings
    pool: asyncpg.Pool
    store: Store
    feed: Feed
    listener: Listener
    poller: Leader
    wal: Leader
    hub: Hub
    dispatcher: Dispatcher
    push: WebPushDestination | None
    http_port: int | None
    presence: presence.Presence


def log_events(events: Sequence[Event]) -> None:
    """One structured log line per event (at DEBUG: the destinations log what they deliver)."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    for event in events:
        logger.debug(
            "event %s %s id=%s",
            event.cursor,
            event.channel,
            event.data.get("id"),
            extra={"event_id": event.id, "channel": event.channel, "merchant_id": event.merchant_id},
        )


@contextlib.asynccontextmanager
async def start(
    settings: Settings,
    *,
    serve_http: bool = True,
    extra_routes: Sequence[BaseRoute] = (),
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
        if resolver is None:
            system = SystemResolver()
            stack.push_async_callback(system.aclose)
            resolver = system
        services = build_services(settings, pool, resolver)
        store, feed, listener, hub = services.store, services.feed, services.listener, services.hub
        poller, wal = services.poller, services.wal
        stop = asyncio.Event()
        # One SSRF-guarded client for every outgoing request (webhooks, push).
        http_client = await stack.enter_async_context(
            build_client(settings.egress_allow, resolver=resolver, dns_timeout=settings.dns_timeout)
        )
        destinations: list[Destination] = [
            WebhookDestination(store, http_client, timeout=settings.webhook_timeout, stop=stop)
        ]
        push = None
        if services.signer is not None:
            push = WebPushDestination(store, WebPushSender(services.signer, http_client))
            destinations.append(push)
        dispatcher = Dispatcher(
            store,
            destinations,
            settings.retry_schedule,
            per_merchant=settings.sends_per_merchant,
            per_host=settings.sends_per_host,
            lease=settings.delivery_lease,
            grace=SHUTDOWN_GRACE - 1,
        )
        feed.subscribe(hub.publish)  # first: live pages are the latency-critical consumer
        feed.subscribe(log_events)
        feed.subscribe(lambda _events: dispatcher.wake())
        scheduler = build_scheduler(
            store,
            settings,
            disable_failing_endpoints=disable_failing_endpoints,
            prune_push_subscriptions=prune_subscriptions if push is not None else None,
        )
        scheduler.start()
        stack.push_async_callback(scheduler.stop)

        server: ServerWithoutSignals | None = None
        if serve_http:
            logs.guard_library_loggers()  # uvicorn logs every handshake with its query string
            config = uvicorn.Config(
                http_app(services, extra_routes),
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
            server = ServerWithoutSignals(config)

        async with asyncio.TaskGroup() as tasks:
            loops = [
                tasks.create_task(_after(dispatcher.started, stop, feed.run(stop)), name="relay-feed"),
                tasks.create_task(_after(dispatcher.started, stop, poller.run(stop)), name="relay-poller"),
                tasks.create_task(_after(dispatcher.started, stop, wal.run(stop)), name="relay-wal"),
                tasks.create_task(listener.run(stop), name="relay-listener"),
                tasks.create_task(services.presence.run(stop), name="relay-presence"),
                tasks.create_task(dispatcher.plan_loop(stop), name="relay-dispatch-plan"),
                tasks.create_task(dispatcher.deliver_loop(stop), name="relay-dispatch-deliver"),
            ]
            http_port: int | None = None
            if server is not None:
                loops.append(tasks.create_task(server.serve(), name="relay-http"))
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                    await asyncio.sleep(0.01)
                http_port = server.servers[0].sockets[0].getsockname()[1]
            try:
                yield Relay(
                    settings,
                    pool,
                    store,
                    feed,
                    listener,
                    poller,
                    wal,
                    hub,
                    dispatcher,
                    push,
                    http_port,
                    services.presence,
                )
            finally:
                stop.set()
                if server is not None:
                    server.should_exit = True
                logger.info("relay stopping")
                await asyncio.gather(
                    scheduler.stop(), services.gateway.disconnect_all(), _drain(loops, SHUTDOWN_GRACE)
                )


async def _after(ready: asyncio.Event, stop: asyncio.Event, loop: Coroutine[Any, Any, None]) -> None:
    """Run ``loop`` once ``ready`` is set. The feed and the leaders wait for the planner's
    cursors: they must exist before anything is sequenced, or events committed while no
    relay ran would get positions below them and never be delivered."""
    await wait_any(ready, stop, timeout=None)
    if stop.is_set():
        loop.close()
        return
    await loop


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
