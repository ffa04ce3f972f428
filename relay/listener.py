"""The LISTEN connection: probe it, reconnect forever, re-LISTEN, and hand wake-ups on.

The connection is dedicated (never from the pool, whose connections run
``UNLISTEN *`` on release). asyncpg keeps no TCP keepalive, so a half-open
connection looks merely idle: a ``SELECT 1`` with a timeout every few seconds
proves it lives. The notification callback only enqueues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import asyncpg

from relay import metrics
from relay.aio import wait_any
from relay.db import TRANSIENT_ERRORS
from relay.events import CHANNELS, MalformedNotification, parse_notification
from relay.retry import FailureStreak
from relay.store import Store

logger = logging.getLogger(__name__)

QUEUE_SIZE = 10_000


class Listener:
    """Keeps one LISTEN connection alive and reports every notification.

    ``on_notify(event_id)`` is called for each valid payload, and ``on_connect()``
    after every (re)connection, once LISTEN is in place, so the caller can run a
    reconciliation pass for whatever was committed while nobody listened. ``others``
    maps further channels to the callback that takes their payloads (it must only enqueue).
    """

    def __init__(
        self,
        dsn: str,
        *,
        on_notify: Callable[[int], None],
        on_connect: Callable[[], None],
        probe_interval: float = 2.0,
        probe_timeout: float = 2.0,
        max_delay: float = 10.0,
        others: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self._others = dict(others or {})
        self._dsn = dsn
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._max_delay = max_delay
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(QUEUE_SIZE)
        self._overflowed = False
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.connections = 0

    def _enqueue(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        try:
            self._queue.put_nowait((channel, payload))
        except asyncio.QueueFull:
            # Payloads are only wake-ups: the feed reads the durable rows, so a lost
            # one costs nothing but validation. Say so once per overflow.
            if not self._overflowed:
                logger.warning("notification queue full; waking the feed without parsing")
            self._overflowed = True
            self._on_connect()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set, reconnecting for ever with capped backoff."""
        consumer = asyncio.create_task(self._consume(), name="relay-notify-consumer")
        try:
            failures = FailureStreak("listener cannot connect", base=0.05, cap=self._max_delay)
            down_since: float | None = None
            while not stop.is_set():
                try:
                    conn = await asyncpg.connect(
                        self._dsn,
                        timeout=max(self._probe_timeout, 5.0),
                        server_settings={"application_name": "relay-listener"},
                    )
                except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                    await failures.pause(exc, stop)
                    continue
                failures.reset()
                try:
                    await self._listen(conn, stop, reconnect=self.connections > 0)
                    if down_since is not None:
                        metrics.listener_disconnected_seconds.inc(time.monotonic() - down_since)
                except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                    if not stop.is_set():
                        logger.warning("listener connection lost (%s: %s)", type(exc).__name__, exc)
                finally:
                    self.connected.clear()
                    self.backend_pid = None
                    down_since = time.monotonic()
                    conn.terminate()
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    async def _listen(self, conn: asyncpg.Connection, stop: asyncio.Event, *, reconnect: bool) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        for channel in CHANNELS:
            await conn.add_listener(channel, self._enqueue)
        for channel, callback in self._others.items():
            await conn.add_listener(channel, lambda _c, _p, _ch, payload, take=callback: take(payload))
        self.backend_pid = conn.get_server_pid()
        self.connections += 1
        self.connected.set()
        if reconnect:
            metrics.listener_reconnects.inc()
            logger.info("listener reconnected (backend pid %s)", self.backend_pid)
        else:
            logger.info("listening on %s (backend pid %s)", ", ".join(CHANNELS), self.backend_pid)
        self._on_connect()
        probe = Store(conn)
        while not stop.is_set():
            await wait_any(stop, lost, timeout=self._probe_interval)
            if lost.is_set() or conn.is_closed():
                raise ConnectionResetError("the LISTEN connection was closed")
            if not stop.is_set():
                await probe.ping(within=self._probe_timeout)

    async def _consume(self) -> None:
        while True:
            channel, payload = await self._queue.get()
            self._overflowed = False
            metrics.events_received.labels(channel).inc()
            try:
                event_id = parse_notification(channel, payload)
            except MalformedNotification as exc:
                metrics.notifications_malformed.inc()
                logger.warning(
                    "malformed notification on %s refused: %s (payload %.200r)",
                    channel,
                    exc,
                    payload,
                    extra={"channel": channel},
                )
                continue
            self._on_notify(event_id)
