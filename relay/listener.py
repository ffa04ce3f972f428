"""The LISTEN connection: probe it, reconnect forever, re-LISTEN, and hand wake-ups on.

The connection is dedicated (never from the pool, whose connections run
``UNLISTEN *`` on release). asyncpg keeps no TCP keepalive, so a half-open
connection looks merely idle: a ``SELECT 1`` with a timeout every few seconds
proves it lives. A notification is checked and handed on in its callback (asyncpg
runs each in a callback of its own), with no queue and task between it and the feed:
each hop is one more turn of the event loop on the live path.

It also keeps the process's catalog of sources current: it reads ``relay.sources``
(through ``load_sources``, over the pool: the listen connection runs nothing but
LISTEN and its probe) on every (re)connection, on every ``relay_sources`` NOTIFY
(sent by attach and detach) and every ``SOURCES_REFRESH`` seconds (so a missed
NOTIFY still converges), and LISTENs to the new sources' event names and UNLISTENs
the removed ones. A failed read keeps the catalog it had and is tried again. It follows
the capture mode the same way (``relay capture`` sends ``relay_sources`` too), and
hands on the leaders' wake-ups (``relay_wake``, poll and wal mode).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import asyncpg

from relay import metrics
from relay.aio import wait_any
from relay.capture import CaptureMode
from relay.db import TRANSIENT_ERRORS
from relay.events import (
    SOURCES_CHANNEL,
    WAKE_CHANNEL,
    MalformedNotification,
    Source,
    Sources,
    parse_notification,
)
from relay.retry import FailureStreak
from relay.store import Store

logger = logging.getLogger(__name__)

# Seconds between two reads of relay.sources when no relay_sources NOTIFY came: a process
# that missed one follows an attach or detach within this (the contract says 5 s).
SOURCES_REFRESH = 4.0


class Listener:
    """Keeps one LISTEN connection alive and reports every notification.

    ``on_notify(event_id)`` is called for each valid payload, ``on_wake(sender)`` for each
    wake-up of a poller (``sender``: the backend pid that sent it), and ``on_connect()``
    after every (re)connection, once LISTEN is in place, whenever new event names are
    listened to and whenever the capture mode changed, so the caller can run a
    reconciliation pass for whatever was committed while nobody listened. ``sources`` and
    ``capture`` are the catalog and the mode it keeps current. ``others`` maps further
    channels to the callback that takes their payloads (it must only enqueue).
    """

    def __init__(
        self,
        dsn: str,
        *,
        sources: Sources,
        load_sources: Callable[[], Awaitable[Sequence[Source]]],
        capture: CaptureMode,
        load_capture: Callable[[], Awaitable[str]],
        on_notify: Callable[[int], None],
        on_wake: Callable[[int], None],
        on_connect: Callable[[], None],
        probe_interval: float = 2.0,
        probe_timeout: float = 2.0,
        max_delay: float = 10.0,
        others: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self._others = dict(others or {})
        self._dsn = dsn
        self.sources = sources
        self._load_sources = load_sources
        self.capture = capture
        self._load_capture = load_capture
        self._sources_failing = False
        self.sources_refresh = SOURCES_REFRESH
        # Every event name ever listened to: a notification queued just before its source
        # was detached is still a well-formed one.
        self._heard: set[str] = set()
        self._on_notify = on_notify
        self._on_wake = on_wake
        self._on_connect = on_connect
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._max_delay = max_delay
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.connections = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set, reconnecting for ever with capped backoff."""
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

    async def _listen(self, conn: asyncpg.Connection, stop: asyncio.Event, *, reconnect: bool) -> None:
        lost, changed = asyncio.Event(), asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(SOURCES_CHANNEL, lambda *_: changed.set())
        await conn.add_listener(WAKE_CHANNEL, lambda _c, sender, _ch, _p: self._on_wake(sender))
        for channel, callback in self._others.items():
            await conn.add_listener(channel, lambda _c, _p, _ch, payload, take=callback: take(payload))
        listening: set[str] = set()
        await self._follow_sources(conn, listening)
        self.backend_pid = conn.get_server_pid()
        self.connections += 1
        self.connected.set()
        if reconnect:
            metrics.listener_reconnects.inc()
            logger.info("listener reconnected (backend pid %s)", self.backend_pid)
        else:
            channels = ", ".join(sorted([*listening, *self._others]))
            logger.info("listening on %s (backend pid %s)", channels, self.backend_pid)
        self._on_connect()
        probe = Store(conn)
        clock = asyncio.get_running_loop().time
        next_probe, next_read = clock() + self._probe_interval, clock() + self.sources_refresh
        while not stop.is_set():
            await wait_any(stop, lost, changed, timeout=max(0.0, min(next_probe, next_read) - clock()))
            if lost.is_set() or conn.is_closed():
                raise ConnectionResetError("the LISTEN connection was closed")
            if stop.is_set():
                break
            if changed.is_set() or clock() >= next_read:
                changed.clear()
                next_read = clock() + self.sources_refresh
                if await self._follow_sources(conn, listening):
                    self._on_connect()  # what new sources committed before LISTEN; a new mode
            if clock() >= next_probe:
                await probe.ping(within=self._probe_timeout)
                next_probe = clock() + self._probe_interval

    async def _follow_sources(self, conn: asyncpg.Connection, listening: set[str]) -> bool:
        """Read the sources and the mode; LISTEN to new event names, UNLISTEN removed ones.
        True if any is new or the mode changed."""
        mode = self.capture.mode
        try:
            async with asyncio.timeout(self._probe_timeout):
                self.sources.replace(await self._load_sources())
                self.capture.follow(await self._load_capture())
            self._sources_failing = False
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            if not self._sources_failing:  # once per failure streak
                logger.warning("cannot read the sources (%s: %s); trying again", type(exc).__name__, exc)
            self._sources_failing = True
        wanted = set(self.sources.channels)
        added, removed = sorted(wanted - listening), sorted(listening - wanted)
        self._heard.update(added)
        for channel in added:
            await conn.add_listener(channel, self._notified)
        for channel in removed:
            await conn.remove_listener(channel, self._notified)
        if listening and (added or removed):
            logger.info("sources changed: now listening on %s", ", ".join(sorted(wanted)))
        listening.symmetric_difference_update([*added, *removed])
        return bool(added) or self.capture.mode != mode

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        metrics.events_received.labels(channel).inc()
        try:
            event_id = parse_notification(channel, payload, self._heard)
        except MalformedNotification as exc:
            metrics.notifications_malformed.inc()
            logger.warning(
                "malformed notification on %s refused: %s (payload %.200r)",
                channel,
                exc,
                payload,
                extra={"channel": channel},
            )
            return
        self._on_notify(event_id)
