"""Events -> deliveries; claim, send, record, schedule retries. Shared by every channel.

Planning: for each channel, one transaction locks the channel's row in
``relay.cursors``, inserts a delivery row per event x target for the next positions
(the channel's ``plan_sql``) and moves the cursor. The row lock makes planning
exactly-once however many relay processes run.

Sending: due deliveries are claimed in batches with ``FOR UPDATE SKIP LOCKED``; a
claim is a lease (``locked_until``, renewed while held) so deliveries held by a
process that died are claimed again once it runs out. Concurrency is bounded
overall, per target, per merchant and per destination host, and the claim itself
respects the same bounds: a merchant or a host whose sends are slow (a name that does
not resolve, a server that never answers) holds at most its share of the sender, and
its other deliveries stay unclaimed in the table, due, for this or another process to
take as slots free up, while every other merchant's deliveries are claimed and sent at
once. Outcomes are recorded in batches, retrying through dropped connections; a
database error before a send hands the delivery back without using up an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg

from relay import metrics
from relay.aio import sleep_or_stop, wait_any
from relay.channels.base import Channel, Delivery, Outcome
from relay.db import TRANSIENT_ERRORS, FailureStreak, backoff, q, retrying
from relay.events import Event
from relay.retry import RetrySchedule

logger = logging.getLogger(__name__)

TargetKey = tuple[str, int]
K = TypeVar("K", bound=Hashable)


class _Quota(Generic[K]):
    """Sends in flight per key (target, merchant or host), at most ``limit``; and the
    deliveries this process holds per key, at most ``cap`` (twice the limit, so the next
    ones are claimed while the first are sent). Claims take no more than a key's room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cap = limit * 2
        self.held: Counter[K] = Counter()
        self._slots: dict[K, asyncio.Semaphore] = {}

    def full(self, key: K) -> bool:
        return self.held[key] >= self.cap

    def slot(self, key: K) -> asyncio.Semaphore:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(self.limit)
        return slot

    def hold(self, key: K) -> None:
        self.held[key] += 1

    def drop(self, key: K) -> None:
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]
            slot = self._slots.get(key)
            if slot is not None and not slot.locked():
                del self._slots[key]


@dataclass(frozen=True, slots=True)
class _Record:
    delivery: Delivery
    state: str | None  # None: release (no attempt made)
    delay: float
    status: int | None = None
    error: str | None = None
    ms: int | None = None


class Dispatcher:
    """Plans and sends the deliveries of ``channels``; one per relay process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        channels: Sequence[Channel],
        schedule: RetrySchedule,
        *,
        concurrency: int = 128,
        per_target: int = 8,
        per_merchant: int = 32,
        per_host: int = 64,
        batch: int = 200,
        plan_batch: int = 200,
        lease: float = 25.0,
        poll_interval: float = 1.0,
        grace: float = 4.0,
    ) -> None:
        self._pool = pool
        self._channels = {c.name: c for c in channels}
        self._schedule = schedule
        self._concurrency = concurrency
        self._batch = batch
        self._plan_batch = plan_batch
        self._lease = lease
        self._poll = poll_interval
        self._grace = grace
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = asyncio.Event()  # set once every channel has a planning cursor
        self._plan_wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._sending = asyncio.Semaphore(concurrency)
        self._targets: _Quota[TargetKey] = _Quota(min(per_target, concurrency))
        self._merchants: _Quota[str] = _Quota(min(per_merchant, concurrency))
        self._hosts: _Quota[str] = _Quota(min(per_host, concurrency))
        self._held: dict[int, Delivery] = {}
        self._records: asyncio.Queue[_Record | None] = asyncio.Queue()

    # ------------------------------------------------------------------ planning

    def wake(self) -> None:
        """New events were handed on: plan (and then send) now."""
        self._plan_wake.set()

    async def plan_loop(self, stop: asyncio.Event) -> None:
        failures = FailureStreak("cannot plan deliveries")
        sequence = True
        while not stop.is_set():
            try:
                more = await self.plan_once(sequence=sequence)
                failures.reset()
                self.started.set()
            except TRANSIENT_ERRORS as exc:
                await failures.pause(exc, stop)
                continue
            if more:
                continue
            await wait_any(self._plan_wake, stop, timeout=self._poll)
            # A wake-up comes from the feed, which has just sequenced; a timeout is the
            # periodic poll, which sequences too, in case no feed runs here.
            sequence = not self._plan_wake.is_set()
            self._plan_wake.clear()

    async def plan_once(self, *, sequence: bool = False) -> bool:
        """Plan the next batch of positions for every channel; True if more are waiting."""
        more = False
        planned = 0
        async with self._pool.acquire() as conn:
            if not self.started.is_set():
                # A channel's first cursor starts at the last position sequenced so far,
                # before this process sequences anything: events committed while no relay
                # ran are still unsequenced, so they come after it and are delivered.
                for name in self._channels:
                    await conn.execute(q("cursor_create"), name)
            if sequence:
                await conn.execute(q("sequence_events"))
            for channel in self._channels.values():
                async with conn.transaction():
                    position = await conn.fetchval(q("cursor_lock"), channel.name)
                    if position is None:  # removed meanwhile
                        await conn.execute(q("cursor_create"), channel.name)
                        position = await conn.fetchval(q("cursor_lock"), channel.name)
                    last = int(await conn.fetchval(q("max_position")))
                    upto = int(await conn.fetchval(q("plan_upto"), position, self._plan_batch))
                    if upto <= position:
                        continue
                    status = await conn.execute(channel.plan_sql, position, upto)
                    await conn.execute(q("cursor_set"), channel.name, upto)
                planned += int(status.rsplit(" ", 1)[-1])
                more = more or upto < last
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
                room = self._concurrency * 2 - len(self._held)
                if room <= 0:
                    self._claim_wake.clear()
                    await wait_any(self._claim_wake, stop, timeout=self._poll)
                    continue
                self._claim_wake.clear()
                try:
                    claimed = await self._claim(min(room, self._batch))
                    failures.reset()
                except TRANSIENT_ERRORS as exc:
                    await failures.pause(exc, stop)
                    continue
                for delivery, event in claimed:
                    task = tasks.create_task(
                        self._deliver(delivery, event, stop), name=f"delivery-{delivery.id}"
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

    async def _claim(self, limit: int) -> list[tuple[Delivery, Event]]:
        kept: list[tuple[Delivery, Event]] = []
        try:
            async with self._pool.acquire() as conn:
                for name in self._channels:
                    if len(kept) >= limit:
                        break
                    rows = await conn.fetch(
                        q("deliveries_claim"),
                        name,
                        limit - len(kept),
                        self.worker_id,
                        self._lease,
                        json.dumps({str(t): n for (c, t), n in self._targets.held.items() if c == name}),
                        self._targets.cap,
                        json.dumps(self._merchants.held),
                        self._merchants.cap,
                        json.dumps(self._hosts.held),
                        self._hosts.cap,
                    )
                    kept.extend(self._take(rows))
        except TRANSIENT_ERRORS:
            if not kept:
                raise
            # What an earlier channel's claim committed is held here now: send it.
        return kept

    def _take(self, rows: list[asyncpg.Record]) -> list[tuple[Delivery, Event]]:
        """Hold the claimed rows; hand straight back any over a cap (the claim already
        stays within them, so this is only a safety net)."""
        kept: list[tuple[Delivery, Event]] = []
        for row in rows:
            delivery, event = self._parse(row)
            quotas = self._quotas(delivery)
            if any(quota.full(key) for quota, key in quotas):
                self._records.put_nowait(_Record(delivery, None, 0.0))
                continue
            for quota, key in quotas:
                quota.hold(key)
            self._held[delivery.id] = delivery
            kept.append((delivery, event))
        return kept

    def _quotas(self, delivery: Delivery) -> list[tuple[_Quota[Any], Hashable]]:
        """The limits a delivery counts against, in the order its slots are taken."""
        quotas: list[tuple[_Quota[Any], Hashable]] = [
            (self._targets, (delivery.channel, delivery.target_id)),
            (self._merchants, delivery.merchant_id or ""),
        ]
        if delivery.destination is not None:
            quotas.append((self._hosts, delivery.destination))
        return quotas

    @staticmethod
    def _parse(row: asyncpg.Record) -> tuple[Delivery, Event]:
        delivery = Delivery(
            id=row["id"],
            event_id=row["event_id"],
            channel=row["channel"],
            target_id=row["target_id"],
            merchant_id=row["merchant_id"],
            attempts=row["attempts"],
            destination=row["destination"],
        )
        payload = row["payload"]
        event = Event(
            position=row["event_position"],
            id=row["event_id"],
            channel=row["event_channel"],
            merchant_id=row["event_merchant_id"],
            data=json.loads(payload) if isinstance(payload, str) else payload,
            created_at=row["created_at"],
        )
        return delivery, event

    async def _deliver(self, delivery: Delivery, event: Event, stop: asyncio.Event) -> None:
        channel = self._channels[delivery.channel]
        log = {"delivery_id": delivery.id, "event_id": delivery.event_id, "channel": delivery.channel}
        try:
            async with contextlib.AsyncExitStack() as slots:
                # Target, merchant and host slots first: a delivery waiting for one of them
                # holds none of the sender's overall concurrency.
                for quota, key in self._quotas(delivery):
                    await slots.enter_async_context(quota.slot(key))
                await slots.enter_async_context(self._sending)
                if stop.is_set():
                    self._records.put_nowait(_Record(delivery, None, 0.0))
                    return
                started = time.monotonic()
                try:
                    outcome = await channel.send(delivery, event)
                except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                    # Nothing was sent: hand it back without using up an attempt.
                    logger.warning(
                        "delivery %s not attempted: %s: %s", delivery.id, type(exc).__name__, exc, extra=log
                    )
                    self._records.put_nowait(_Record(delivery, None, backoff(2, base=0.5, cap=5.0)))
                    return
                except Exception as exc:
                    logger.exception(
                        "channel %s failed on delivery %s", delivery.channel, delivery.id, extra=log
                    )
                    outcome = Outcome("retry", None, f"internal error: {type(exc).__name__}")
                elapsed_ms = int((time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            self._records.put_nowait(_Record(delivery, None, 0.0))
            raise
        if outcome.kind == "gone":
            try:
                await channel.target_gone(delivery, outcome)
            except Exception:
                logger.exception("could not mark target %s gone", delivery.target_id, extra=log)
        self._records.put_nowait(self._decide(delivery, event, outcome, elapsed_ms))

    def _decide(self, delivery: Delivery, event: Event, outcome: Outcome, ms: int) -> _Record:
        """Turn an attempt's outcome into the row's next state, and count it."""
        log = {
            "delivery_id": delivery.id,
            "event_id": delivery.event_id,
            "channel": delivery.channel,
            "merchant_id": delivery.merchant_id,
        }
        attempt = delivery.attempts + 1
        label: str = outcome.kind
        if outcome.kind == "success":
            state, delay = "succeeded", 0.0
            age = (datetime.now(UTC) - event.created_at).total_seconds()
            metrics.delivery_seconds.labels(delivery.channel).observe(max(age, 0.0))
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
        metrics.deliveries.labels(delivery.channel, label).inc()
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
        attempts = [r for r in batch if r.state is not None]
        releases = [r for r in batch if r.state is None]

        async def write() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                if attempts:
                    await conn.execute(
                        q("deliveries_record"),
                        [r.delivery.id for r in attempts],
                        [r.state for r in attempts],
                        [r.delay for r in attempts],
                        [r.status for r in attempts],
                        [r.error for r in attempts],
                        [r.ms for r in attempts],
                        self.worker_id,
                    )
                if releases:
                    await conn.execute(
                        q("deliveries_release"),
                        [r.delivery.id for r in releases],
                        [r.delay for r in releases],
                        self.worker_id,
                    )

        try:
            await retrying(write, what="recording delivery outcomes")
        except asyncpg.PostgresError:
            logger.exception("could not record %d delivery outcomes; their leases will expire", len(batch))
        finally:
            for record in batch:
                if self._held.pop(record.delivery.id, None) is not None:
                    for quota, key in self._quotas(record.delivery):
                        quota.drop(key)
            self._claim_wake.set()

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        """Extend the lease of every delivery still held here."""
        while not stop.is_set():
            await sleep_or_stop(stop, self._lease / 3)
            ids = list(self._held)
            if not ids:
                continue
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._pool.execute(q("deliveries_renew"), ids, self.worker_id, self._lease)
