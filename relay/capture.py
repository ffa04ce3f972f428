"""Capture modes: how committed changes of the sources reach Relay, and the leaders of poll and wal mode.

The mode lives in the database (``relay.capture``). ``relay capture MODE`` switches it with
``relay.set_capture()``, which rewrites every source's trigger function at once, so even
sessions already open follow from their next transaction. Each relay process follows the
mode in a ``CaptureMode``, kept current by its listener the way it keeps the sources
(on NOTIFY ``relay_sources``, on every reconnection, and every few seconds).

* ``notify``: the triggers write the durable row and NOTIFY; the feed sequences.
* ``poll``: the triggers only write the durable row, so the application's commits never
  queue on NOTIFY's database-wide commit lock. The poller looks at the small unsequenced
  index every ``RELAY_POLL_INTERVAL`` seconds and sequences what committed.
* ``wal``: no trigger; the wal reader (``relay.wal``) reads the logical replication slot
  every ``RELAY_POLL_INTERVAL`` seconds and records and sequences what it holds.

In poll and wal mode one relay process at a time does that work: its ``Leader``, the
holder of the mode's session advisory lock, on a dedicated connection to the listen URL (a
transaction pooler would lose a session lock). It wakes every relay process with one
NOTIFY ``relay_wake`` per batch from its own connection. When its process or connection
dies, the lock goes with the session, and another process's leader, which tries every
second, takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import Gauge

from relay import metrics
from relay.aio import wait_any
from relay.db import TRANSIENT_ERRORS
from relay.retry import FailureStreak
from relay.store import Store

logger = logging.getLogger(__name__)

MODES = ("notify", "poll", "wal")
DEFAULT_MODE = "notify"
# The session lock each leader holds, by mode, and its connection's name.
LOCKS = {"poll": "relay.poller", "wal": "relay.wal"}
APPLICATION_NAMES = {"poll": "relay-poller", "wal": "relay-wal"}
# Seconds between two tries for a leader's lock by a process that does not hold it: how
# soon another process takes over when the leading process dies.
LOCK_RETRY = 1.0
# Events sequenced per pass at most; a full batch is followed by another pass at once.
BATCH = 10_000
# A leader's connection: TCP keepalives so that PostgreSQL ends the session, and with it
# the lock, within about 11 s of its host vanishing without closing the connection (a
# SIGKILLed process closes it at once).
SERVER_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


class CaptureMode:
    """The capture mode this process follows (``notify`` until the first read)."""

    def __init__(self, mode: str = DEFAULT_MODE) -> None:
        self._mode = mode
        self._changed = asyncio.Event()
        _export(mode)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def polled(self) -> bool:
        """Whether a leader sequences the events (poll and wal mode): the feed's wake-ups only read."""
        return self._mode in LOCKS

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change of mode."""
        return self._changed

    def follow(self, mode: str) -> None:
        """The mode as read from the database."""
        if mode == self._mode:
            return
        logger.info("capture mode is now %s (was %s)", mode, self._mode)
        self._mode = mode
        _export(mode)
        self._changed.set()
        self._changed = asyncio.Event()


def _export(mode: str) -> None:
    for name in MODES:
        metrics.capture_mode.labels(name).set(1 if name == mode else 0)


# What a leader does in a pass over its connection: how many events it sequenced, and
# whether more are waiting (then the next pass runs at once).
Work = Callable[[Store], Awaitable[tuple[int, bool]]]


class Leader:
    """In its mode, competes for the mode's lock and, while it holds it, runs ``work`` passes.

    Runs in every relay process; holds no connection outside its mode. After a pass that
    sequenced events it calls ``on_sequenced()`` at once: its own process need not wait for
    the NOTIFY relay_wake that wakes the others (which ``backend_pid`` sent).
    """

    def __init__(
        self,
        mode: str,
        dsn: str,
        capture: CaptureMode,
        work: Work,
        *,
        gauge: Gauge,
        on_sequenced: Callable[[], None] = lambda: None,
        interval: float = 0.02,
        timeout: float = 2.0,
        max_delay: float = 10.0,
    ) -> None:
        self.mode = mode
        self._dsn = dsn
        self._capture = capture
        self._work = work
        self._gauge = gauge
        self._on_sequenced = on_sequenced
        self._interval = interval
        self._timeout = timeout
        self._max_delay = max_delay
        self.lock_retry = LOCK_RETRY
        self.leading = asyncio.Event()
        self.backend_pid: int | None = None

    def _current(self) -> bool:
        return self._capture.mode == self.mode

    async def run(self, stop: asyncio.Event) -> None:
        failures = FailureStreak(
            f"{self.mode} leader cannot reach the database", base=0.05, cap=self._max_delay
        )
        settings = {**SERVER_SETTINGS, "application_name": APPLICATION_NAMES[self.mode]}
        while not stop.is_set():
            if not self._current():
                await wait_any(self._capture.changed, stop, timeout=None)
                continue
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=max(self._timeout, 5.0), server_settings=settings
                )
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                await failures.pause(exc, stop)
                continue
            try:
                self.backend_pid = conn.get_server_pid()
                await self._serve(Store(conn), stop, failures)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                if not stop.is_set():
                    await failures.pause(exc, stop)
            finally:
                if self.leading.is_set():
                    logger.info("this process no longer leads %s mode", self.mode)
                self.leading.clear()
                self._gauge.set(0)
                self.backend_pid = None
                conn.terminate()  # the session, and the lock with it, ends here

    async def _serve(self, store: Store, stop: asyncio.Event, failures: FailureStreak) -> None:
        """Wait for the lock (another process may hold it), then work while in the mode."""
        while not await store.try_leader_lock(LOCKS[self.mode], within=self._timeout):
            failures.reset()  # the connection works
            await wait_any(stop, self._capture.changed, timeout=self.lock_retry)
            if stop.is_set() or not self._current():
                return
        failures.reset()
        self.leading.set()
        self._gauge.set(1)
        logger.info(
            "this process leads %s mode: a pass every %gs (pid %s)",
            self.mode,
            self._interval,
            self.backend_pid,
        )
        clock = time.monotonic
        next_pass = clock()
        while not stop.is_set() and self._current():
            count, more = await self._work(store)
            if count:
                self._on_sequenced()
            if more:
                continue
            # A fixed rate; a pass that ran late does not make the next ones run early.
            next_pass = max(next_pass + self._interval, clock())
            await asyncio.sleep(next_pass - clock())


def poll_pass(timeout: float) -> Work:
    """Poll mode's pass: sequence what the triggers wrote into relay.inbox."""

    async def work(store: Store) -> tuple[int, bool]:
        started = time.perf_counter()
        count = await store.poll_events(BATCH, within=timeout)
        took = time.perf_counter() - started
        metrics.poll_seconds.labels("sequenced" if count else "empty").observe(took)
        if count:
            metrics.poll_events.inc(count)
        return count, count >= BATCH

    return work
