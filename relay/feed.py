"""The ordered event feed: sequence committed events and hand them on in commit order.

In notify capture mode the feed is the process's only caller of the sequencer
(``relay.sequence_events``, through ``Store.advance``); everything else reads by
position. A NOTIFY only wakes the feed; what it hands on are the durable
``relay.events`` rows. The live path and the reconciliation poll are therefore the same
code: a pass after a NOTIFY, after a reconnect, or every ``reconcile_interval`` seconds
(the one reconciliation timer). Nothing committed can be skipped, and nothing is handed
on twice by one process.

In poll and wal mode a leader (the poller, the slot reader: ``relay.capture``) sequences and
wakes the feed with NOTIFY ``relay_wake``; those passes only read by position. The
reconciliation timer's pass and a pass a waiting reader asked for (``caught_up``) still
sequence, so what reached relay.events keeps flowing, late, while no leader runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import asyncpg

from relay import metrics
from relay.capture import CaptureMode
from relay.db import TRANSIENT_ERRORS
from relay.events import Event
from relay.retry import FailureStreak, retrying
from relay.store import Store

logger = logging.getLogger(__name__)

Consumer = Callable[[Sequence[Event]], None]
BATCH = 1000
_ANNOUNCED_LIMIT = 100_000
# An event handed on before its NOTIFY arrived counts as recovered only if the
# NOTIFY has not turned up this long after (it was missed, not merely late).
NOTIFY_GRACE = 2.0


class Feed:
    """Hands every event committed after start-up to each consumer, once, in order.

    Consumers are plain callables run on the event loop: they must not block (put
    work on a queue, or write to sockets without awaiting each one).

    The feed keeps one connection of the pool while it runs (another after a failure):
    a pass is then one round trip, where a connection taken and given back each time
    costs a second one (the pool's session reset) before the rows come back.
    """

    def __init__(
        self, store: Store, *, capture: CaptureMode | None = None, reconcile_interval: float = 30.0
    ) -> None:
        self._store = store
        self._capture = capture if capture is not None else CaptureMode()
        self._interval = reconcile_interval
        self._consumers: list[Consumer] = []
        self._wake = asyncio.Event()
        self._announced: set[int] = set()
        self._unannounced: dict[int, float] = {}
        self.notify_grace = NOTIFY_GRACE
        self.position: int | None = None
        self.started = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def notified(self, event_id: int) -> None:
        """A NOTIFY announced ``event_id``: read it now."""
        if self._unannounced.pop(event_id, None) is not None:
            return  # already handed on by an earlier pass
        if len(self._announced) < _ANNOUNCED_LIMIT:
            self._announced.add(event_id)
        self._wake.set()

    def wake(self) -> None:
        """Run a pass now (after a reconnect, a change of sources or mode, or the poller's wake-up)."""
        self._wake.set()

    async def caught_up(self) -> None:
        """Return once everything committed before this call is sequenced (and handed on),
        so a reader paging by position sees it. Readers waiting together share one pass."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def run(self, stop: asyncio.Event) -> None:
        try:
            self.position = await retrying(self._store.position, what="reading the feed position", stop=stop)
        except TRANSIENT_ERRORS:
            if stop.is_set():
                return  # asked to stop before the database came back
            raise
        logger.info("feed starts after position %s", self.position)
        self.started.set()
        failures = FailureStreak("feed cannot read events")
        waiting: list[asyncio.Future[None]] = []
        # One waiter for a wake-up or the stop (a stop wakes the feed): asyncio.wait over
        # both events would add two tasks and three turns of the loop to every pass.
        stopping = asyncio.get_running_loop().create_task(_set_when(stop, self._wake))
        held = contextlib.AsyncExitStack()  # the feed's own connection, while it works
        session: Store | None = None
        try:
            while not stop.is_set():
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._interval):
                            await self._wake.wait()
                if stop.is_set():
                    break
                # Sequence, unless a poller does and this is neither the timer's pass nor one
                # a reader waits for.
                sequence = not self._capture.polled or not self._wake.is_set() or bool(self._waiters)
                self._wake.clear()
                waiting += self._waiters
                self._waiters.clear()
                try:
                    if session is None:
                        session = await held.enter_async_context(self._store.held())
                    more = await self.advance(session, sequence=sequence)
                    failures.reset()
                except TRANSIENT_ERRORS as exc:
                    session = None
                    await _let_go(held)
                    await failures.pause(exc, stop)
                    more = True
                if more:
                    self._wake.set()
                else:
                    _release(waiting)
        finally:
            stopping.cancel()
            _release([*waiting, *self._waiters])
            await _let_go(held)

    async def advance(self, store: Store, *, sequence: bool = True) -> bool:
        """Sequence (unless told not to) and hand on the next batch, read through ``store``;
        return True when more may be waiting."""
        assert self.position is not None
        read = store.advance if sequence else store.events_after
        events = await read(self.position, BATCH)
        if not events:
            self._account(())
            return False
        self.position = events[-1].position
        self._account(events)
        metrics.events_handed_on.inc(len(events))
        for consumer in self._consumers:
            try:
                consumer(events)
            except Exception:
                logger.exception("consumer %r failed; the other consumers go on", consumer)
        return len(events) == BATCH

    def _account(self, events: Sequence[Event]) -> None:
        """Count the events no NOTIFY announced (relay_events_recovered_total)."""
        if self._capture.polled:  # the triggers announce nothing: no event is "recovered"
            self._announced.clear()
            self._unannounced.clear()
            return
        now = time.monotonic()
        for event in events:
            if event.id in self._announced:
                self._announced.discard(event.id)
            else:
                self._unannounced[event.id] = now
        recovered = 0
        for event_id, seen in list(self._unannounced.items()):
            if now - seen < self.notify_grace and len(self._unannounced) < _ANNOUNCED_LIMIT:
                break
            del self._unannounced[event_id]
            recovered += 1
        if recovered:
            metrics.events_recovered.inc(recovered)
        if len(self._announced) >= _ANNOUNCED_LIMIT:
            self._announced.clear()


async def _let_go(held: contextlib.AsyncExitStack) -> None:
    """Give the feed's connection back to the pool, which drops it if it is broken (its
    session reset then fails: nothing the feed must hear of; the next pass takes another)."""
    with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
        await held.aclose()


async def _set_when(stop: asyncio.Event, wake: asyncio.Event) -> None:
    await stop.wait()
    wake.set()


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()
