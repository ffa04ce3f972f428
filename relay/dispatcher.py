"""Events -> deliveries; claim, send, record, schedule retries. Shared by every destination kind.

Planning: for each kind, one transaction locks the kind's row in ``relay.cursors``,
inserts a delivery row per event x destination for the next positions and moves the
cursor (``Store.plan``). The row lock makes planning exactly-once however many relay
processes run.

Sending: due deliveries are claimed in batches with ``FOR UPDATE SKIP LOCKED``; a
claim is a lease (``locked_until``, renewed while held) so deliveries held by a
process that died are claimed again once it runs out. Concurrency is bounded
overall, per destination, per merchant and per destination host, and the claim itself
respects the same bounds: a merchant or a host whose sends are slow (a name that does
not resolve, a server that never answers) holds at most its share of the sender, and
its other deliveries stay unclaimed in the table, due, for this or another process to
take as slots free up, while every other merchant's deliveries are claimed and sent at
once. Outcomes are recorded in batches, retrying through dropped connections; a
database error before a send hands the delivery back without using up an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from relay import metrics
from relay.aio import sleep_or_stop, wait_any
from relay.db import TRANSIENT_ERRORS
from relay.destinations import Delivery, Destination, Outcome
from relay.events import Event
from relay.quota import AHEAD, HELD, Quota
from relay.retry import FailureStreak, RetrySchedule, handback_delay, retrying
from relay.store import Attempt, ClaimRoom, Store

logger = logging.getLogger(__name__)

DestinationKey = tuple[str, int]
# Attempts that end before the next claim while deliveries in hand still wait for a slot
# (half a merchant's default send limit: the other half still waits while it runs).
COALESCE = 8


@dataclass(frozen=True, slots=True)
class _Record:
    delivery: Delivery
    state: str | None  # None: release (no attempt made)
    delay: float
    status: int | None = None
    error: str | None = None
    ms: int | None = None


class Dispatcher:
    """Plans and sends the deliveries of ``destinations``; one per relay process."""

    def __init__(
        self,
        store: Store,
        destinations: Sequence[Destination],
        schedule: RetrySchedule,
        *,
        concurrency: int = 128,
        per_destination: int = 8,
        per_merchant: int = 32,
        per_host: int = 64,
        batch: int = 200,
        plan_batch: int = 200,
        lease: float = 25.0,
        poll_interval: float = 1.0,
        grace: float = 4.0,
    ) -> None:
        self._store = store
        self._destinations = {d.kind: d for d in destinations}
        self._schedule = schedule
        self._concurrency = concurrency
        self._batch = batch
        self._plan_batch = plan_batch
        self._lease = lease
        self._poll = poll_interval
        self._grace = grace
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = asyncio.Event()  # set once every kind has a planning cursor
        self._plan_wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._sending = asyncio.Semaphore(concurrency)
        self._destinations_quota: Quota[DestinationKey] = Quota(min(per_destination, concurrency))
        self._merchants: Quota[str] = Quota(min(per_merchant, concurrency))
        self._hosts: Quota[str] = Quota(min(per_host, concurrency))
        self._held: dict[int, Delivery] = {}  # leased to this process until recorded
        self._in_hand = 0  # held and not yet attempted (waiting for a slot, or being sent)
        self._waiting = 0  # in hand and waiting for a slot
        self._freed = 0  # attempts ended since the last claim
        self._records: asyncio.Queue[_Record | None] = asyncio.Queue()

    # ------------------------------------------------------------------ planning

    def wake(self) -> None:
        """New events were handed on: plan (and then send) now."""
        self._plan_wake.set()

    async def plan_loop(self, stop: asyncio.Event) -> None:
        failures = FailureStreak("cannot plan deliveries")
        while not stop.is_set():
            try:
                more = await self.plan_once()
                failures.reset()
                self.started.set()
            except TRANSIENT_ERRORS as exc:
                await failures.pause(exc, stop)
                continue
            if more:
                continue
            # The feed wakes the planner after each batch it sequenced (in any process:
            # each process's feed reads every position); the poll is a safety net.
            await wait_any(self._plan_wake, stop, timeout=self._poll)
            self._plan_wake.clear()

    async def plan_once(self) -> bool:
        """Plan the next batch of sequenced positions for every kind; True if more are waiting."""
        if not self.started.is_set():
            # A kind's first cursor starts at the last position sequenced so far; the feed
            # sequences nothing before ``started`` is set, so events committed while no
            # relay ran come after it and are delivered.
            await self._store.create_cursors(list(self._destinations))
        planned, more = await self._store.plan(list(self._destinations), self._plan_batch)
        if planned:
            self._claim_wake.set()
        return more

    # ------------------------------------------------------------------ sending

    async def deliver_loop(self, stop: asyncio.Event) -> None:
        """Claim, send and record until ``stop``; then drain within the grace period."""
        sends: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as tasks:
            recorder = tasks.create_task(self._record_loop(), name="relay-dispatch-recorder")
            tasks.create_task(self._renew_loop(stop), name="relay-dispatch-lease")
            failures = FailureStreak("cannot claim deliveries")
            while not stop.is_set():
                # In hand at most AHEAD times the concurrency, as per key (the limits count
                # what is in hand); held (in hand, or attempted and waiting for its outcome
                # to be recorded) at most HELD times.
                room = min(
                    self._concurrency * AHEAD - self._in_hand, self._concurrency * HELD - len(self._held)
                )
                if room <= 0:
                    self._claim_wake.clear()
                    await wait_any(self._claim_wake, stop, timeout=self._poll)
                    continue
                self._claim_wake.clear()
                self._freed = 0
                try:
                    claimed = await self._claim(min(room, self._batch))
                    failures.reset()
                except TRANSIENT_ERRORS as exc:
                    await failures.pause(exc, stop)
                    continue
                for delivery, event, loaded in claimed:
                    task = tasks.create_task(
                        self._deliver(delivery, event, loaded, stop), name=f"delivery-{delivery.id}"
                    )
                    sends.add(task)
                    task.add_done_callback(sends.discard)
                if len(claimed) < min(room, self._batch):
                    await wait_any(self._claim_wake, stop, timeout=self._poll)
            # Stopping, within the grace period: what has not started goes back at once
            # (see _deliver); what is in flight gets most of the period, then is cancelled
            # and handed back too; the outcomes are written in what is left.
            deadline = time.monotonic() + self._grace
            if sends:
                _done, pending = await asyncio.wait(set(sends), timeout=self._grace * 0.6)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            self._records.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(recorder), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                logger.warning("stopping with %d delivery outcomes unrecorded", self._records.qsize())
                recorder.cancel()

    async def _claim(self, limit: int) -> list[tuple[Delivery, Event, asyncio.Task[None]]]:
        """Claim up to ``limit`` deliveries; each comes with its batch's read of what its send
        needs, under way while the next claim runs (each send waits for it)."""
        kept: list[tuple[Delivery, Event, asyncio.Task[None]]] = []
        try:
            for kind in self._destinations:
                if len(kept) >= limit:
                    break
                room = ClaimRoom(
                    {d: n for (k, d), n in self._destinations_quota.held.items() if k == kind},
                    self._destinations_quota.cap,
                    self._merchants.held,
                    self._merchants.cap,
                    self._hosts.held,
                    self._hosts.cap,
                )
                claimed = await self._store.claim(kind, limit - len(kept), self.worker_id, self._lease, room)
                taken = self._take(claimed)
                if taken:
                    loaded = asyncio.create_task(self._load(kind, taken))
                    kept += [(delivery, event, loaded) for delivery, event in taken]
        except TRANSIENT_ERRORS:
            if not kept:
                raise
            # What an earlier kind's claim committed is held here now: send it.
        return kept

    async def _load(self, kind: str, taken: list[tuple[Delivery, Event]]) -> None:
        """One read of what the batch's sends need; on a database error each send reads its own."""
        if not taken:
            return
        try:
            await self._destinations[kind].load([delivery for delivery, _ in taken])
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            logger.info("cannot load the %s destinations of a batch: %s", kind, exc)

    def _take(self, claimed: list[tuple[Delivery, Event]]) -> list[tuple[Delivery, Event]]:
        """Hold the claimed deliveries; hand straight back any over a cap (the claim already
        stays within them, so this is only a safety net)."""
        kept: list[tuple[Delivery, Event]] = []
        for delivery, event in claimed:
            quotas = self._quotas(delivery)
            if any(quota.full(key) for quota, key in quotas):
                self._records.put_nowait(_Record(delivery, None, 0.0))
                continue
            for quota, key in quotas:
                quota.hold(key)
            self._in_hand += 1
            self._waiting += 1
            self._held[delivery.id] = delivery
            kept.append((delivery, event))
        return kept

    def _quotas(self, delivery: Delivery) -> list[tuple[Quota[Any], Hashable]]:
        """The limits a delivery counts against, in the order its slots are taken."""
        quotas: list[tuple[Quota[Any], Hashable]] = [
            (self._destinations_quota, (delivery.kind, delivery.destination_id)),
            (self._merchants, delivery.merchant_id or ""),
        ]
        if delivery.host is not None:
            quotas.append((self._hosts, delivery.host))
        return quotas

    async def _deliver(
        self, delivery: Delivery, event: Event, loaded: asyncio.Task[None], stop: asyncio.Event
    ) -> None:
        try:
            await self._attempt(delivery, event, loaded, stop)
        finally:
            # The limits count a delivery until its attempt is over; its outcome is recorded
            # with others a moment later (the row stays leased to this process meanwhile)
            # while the next deliveries are claimed and sent.
            self._in_hand -= 1
            for quota, key in self._quotas(delivery):
                quota.drop(key)
            # Claim again once a few slots are free, or at once when nothing in hand is
            # left waiting for one: a claim after every single attempt takes a row or two
            # for the price of reading a batch of candidates.
            self._freed += 1
            if self._waiting == 0 or self._freed >= COALESCE:
                self._claim_wake.set()

    async def _attempt(
        self, delivery: Delivery, event: Event, loaded: asyncio.Task[None], stop: asyncio.Event
    ) -> None:
        destination = self._destinations[delivery.kind]
        held: list[asyncio.Semaphore] = []
        try:
            try:
                if not loaded.done():
                    await asyncio.shield(loaded)  # the batch's read; it never raises (see _load)
                # Destination, merchant and host slots first: a delivery waiting for one of
                # them holds none of the sender's overall concurrency.
                for quota, key in self._quotas(delivery):
                    slot = quota.slot(key)
                    await slot.acquire()
                    held.append(slot)
                await self._sending.acquire()
                held.append(self._sending)
            finally:
                self._waiting -= 1
            if stop.is_set():
                self._records.put_nowait(_Record(delivery, None, 0.0))
                return
            started = time.monotonic()
            try:
                outcome = await destination.send(delivery, event)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                # Nothing was sent: hand it back without using up an attempt.
                logger.warning(
                    "delivery %s not attempted: %s: %s",
                    delivery.id,
                    type(exc).__name__,
                    exc,
                    extra=delivery.log,
                )
                self._records.put_nowait(_Record(delivery, None, handback_delay()))
                return
            except Exception as exc:
                logger.exception("%s failed on delivery %s", delivery.kind, delivery.id, extra=delivery.log)
                outcome = Outcome("retry", None, f"internal error: {type(exc).__name__}")
            elapsed_ms = int((time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            self._records.put_nowait(_Record(delivery, None, 0.0))
            raise
        finally:
            for slot in reversed(held):
                slot.release()
        if outcome.kind == "gone":
            try:
                await destination.gone(delivery, outcome)
            except Exception:
                logger.exception(
                    "could not mark %s %s gone", delivery.kind, delivery.destination_id, extra=delivery.log
                )
        self._records.put_nowait(self._decide(delivery, event, outcome, elapsed_ms))

    def _decide(self, delivery: Delivery, event: Event, outcome: Outcome, ms: int) -> _Record:
        """Turn an attempt's outcome into the row's next state, and count it."""
        log = delivery.log
        attempt = delivery.attempts + 1
        label: str = outcome.kind
        if outcome.kind == "success":
            state, delay = "succeeded", 0.0
            age = (datetime.now(UTC) - event.created_at).total_seconds()
            metrics.delivery_seconds.labels(delivery.kind).observe(max(age, 0.0))
        elif outcome.kind == "retry":
            next_delay = self._schedule.next_delay(attempt, outcome.retry_after)
            if next_delay is None:
                state, delay, label = "failed", 0.0, "failed"
                logger.warning(
                    "delivery %s failed after %d attempts: %s",
                    delivery.id,
                    attempt,
                    outcome.detail,
                    extra=log,
                )
            else:
                state, delay = "pending", next_delay
                logger.info(
                    "delivery %s attempt %d failed (%s); next in %.3g s",
                    delivery.id,
                    attempt,
                    outcome.detail,
                    delay,
                    extra=log,
                )
                if delay < self._poll:
                    asyncio.get_running_loop().call_later(delay, self._claim_wake.set)
        else:
            state, delay = "failed", 0.0
            logger.warning("delivery %s %s: %s", delivery.id, outcome.kind, outcome.detail, extra=log)
        metrics.deliveries.labels(delivery.kind, label).inc()
        error = None if outcome.kind == "success" else (outcome.detail or None)
        return _Record(delivery, state, delay, outcome.status, error, ms)

    # ------------------------------------------------------------------ recording

    async def _record_loop(self) -> None:
        """Write outcomes in batches until the ``None`` sentinel; each write is shielded."""
        while True:
            first = await self._records.get()
            batch: list[_Record] = [] if first is None else [first]
            done = first is None
            while not self._records.empty() and len(batch) < 1000:
                item = self._records.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                await asyncio.shield(self._write(batch))
            if done and self._records.empty():
                return

    async def _write(self, batch: list[_Record]) -> None:
        outcomes = [Attempt(r.delivery.id, r.state, r.delay, r.status, r.error, r.ms) for r in batch]
        try:
            await retrying(
                lambda: self._store.record(outcomes, self.worker_id),
                what="recording delivery outcomes",
            )
        except asyncpg.PostgresError:
            logger.exception("could not record %d delivery outcomes; their leases will expire", len(batch))
        finally:
            full = len(self._held) >= self._concurrency * HELD
            for record in batch:
                self._held.pop(record.delivery.id, None)
            # Claim again if the held deliveries were what stopped the claims, or if one
            # recorded here is due again (almost) at once: a retry or a hand-back.
            if full or any(r.state in (None, "pending") and r.delay < self._poll for r in batch):
                self._claim_wake.set()

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        """Extend the lease of every delivery still held here."""
        while not stop.is_set():
            await sleep_or_stop(stop, self._lease / 3)
            ids = list(self._held)
            if not ids:
                continue
            try:
                await self._store.renew(ids, self.worker_id, self._lease)
            except TRANSIENT_ERRORS:
                pass  # the next renewal comes well before the leases run out
            except asyncpg.PostgresError as exc:
                logger.warning("cannot renew the leases of %d deliveries: %s", len(ids), exc)
