"""Planning, claiming and recording deliveries, and the shared scheduled jobs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from relay.destinations import Delivery
from relay.events import Event
from relay.queries import Queries, q, row_count


class Attempt(NamedTuple):
    """One recorded outcome: the row's next state and what the destination answered; state
    None hands the delivery back (pending after ``delay``) without using up an attempt."""

    delivery_id: int
    state: str | None
    delay: float
    status: int | None
    error: str | None
    ms: int | None


@dataclass(frozen=True)
class ClaimRoom:
    """What one process already holds per destination, merchant and host, and the caps it
    may hold up to: a claim takes no more than each key's remaining room."""

    destinations: Mapping[int, int]
    destination_cap: int
    merchants: Mapping[str, int]
    merchant_cap: int
    hosts: Mapping[str, int]
    host_cap: int


@dataclass
class JobRun:
    """A claimed run of a shared job; set ``error`` before the claim is released if it failed."""

    error: str | None = None


class DeliveryQueries(Queries):
    # ------------------------------------------------------------------ planning and delivery

    async def create_cursors(self, kinds: Sequence[str]) -> None:
        """A planning cursor per destination kind, at the last position sequenced so far."""
        async with self._conn() as conn:
            for kind in kinds:
                await conn.execute(q("cursor_create"), kind)

    async def plan(self, kinds: Sequence[str], batch: int) -> tuple[int, bool]:
        """Insert the deliveries of up to ``batch`` events per kind and move each kind's cursor.

        One transaction per kind locks its cursor row, so planning is exactly-once however
        many processes run. Returns (deliveries planned, whether more events are waiting).
        """
        planned, more = 0, False
        async with self._conn() as conn:
            for kind in kinds:
                async with conn.transaction():
                    window = await conn.fetchrow(q("plan_window"), kind, batch)
                    if window is None:  # removed meanwhile
                        await conn.execute(q("cursor_create"), kind)
                        window = await conn.fetchrow(q("plan_window"), kind, batch)
                    position, upto, last = int(window["position"]), int(window["upto"]), int(window["last"])
                    if upto <= position:
                        continue
                    status = await conn.execute(q(f"{kind}_plan"), position, upto)
                    await conn.execute(q("cursor_set"), kind, upto)
                planned += row_count(status)
                more = more or upto < last
        return planned, more

    async def claim(
        self, kind: str, limit: int, worker: str, lease: float, room: ClaimRoom
    ) -> list[tuple[Delivery, Event]]:
        """Lease up to ``limit`` due deliveries of ``kind`` within ``room`` (see ``deliveries_claim``).

        The claim is prepared afresh each time, so PostgreSQL plans it for these values and
        today's table: a cached statement gets a generic plan after five runs, kept until the
        table is next analyzed, and the claim's, made while relay.deliveries was small, took
        40 ms and more (seconds, with 40,000 rows) on a burst where planning it afresh takes
        0.5 ms and running it 3 ms. Every other statement keeps the pool's cache."""
        async with self._conn() as conn:
            claim = await conn.prepare(q("deliveries_claim"))
            rows = await claim.fetch(
                kind,
                limit,
                worker,
                lease,
                json.dumps({str(key): n for key, n in room.destinations.items()}),
                room.destination_cap,
                json.dumps(room.merchants),
                room.merchant_cap,
                json.dumps(room.hosts),
                room.host_cap,
                [key for key, n in room.destinations.items() if n >= room.destination_cap],
                [key for key, n in room.merchants.items() if n >= room.merchant_cap],
                [key for key, n in room.hosts.items() if n >= room.host_cap],
            )
        claimed = []
        events: dict[int, Event] = {}  # an event's deliveries share one parse of its payload
        for row in rows:
            delivery = Delivery(
                id=row["id"],
                event_id=row["event_id"],
                kind=row["channel"],
                destination_id=row["target_id"],
                merchant_id=row["merchant_id"],
                attempts=row["attempts"],
                host=row["destination"],
            )
            event = events.get(delivery.event_id)
            if event is None:
                payload = row["payload"]
                event = events[delivery.event_id] = Event(
                    position=row["event_position"],
                    id=row["event_id"],
                    channel=row["event_channel"],
                    merchant_id=row["event_merchant_id"],
                    data=json.loads(payload) if isinstance(payload, str) else payload,
                    created_at=row["created_at"],
                )
            claimed.append((delivery, event))
        return claimed

    async def record(self, outcomes: Sequence[Attempt], worker: str) -> None:
        """Write a batch of outcomes in one statement: attempts, and hand-backs (state None)."""
        if not outcomes:
            return
        columns = list(zip(*sorted(outcomes, key=lambda o: o.delivery_id), strict=True))
        async with self._conn() as conn:
            await conn.execute(q("deliveries_record"), *(list(c) for c in columns), worker)

    async def renew(self, delivery_ids: Sequence[int], worker: str, lease: float) -> None:
        async with self._conn() as conn:
            await conn.execute(q("deliveries_renew"), list(delivery_ids), worker, lease)

    # ------------------------------------------------------------------ scheduled jobs

    @contextlib.asynccontextmanager
    async def shared_run(self, job: str, min_gap: float) -> AsyncIterator[JobRun | str]:
        """Claim a run of a shared job, or say why not (running elsewhere, ran recently).

        The claim is a transaction-scoped advisory lock held for the whole run (never left
        behind on a pooled connection, and fine through a transaction pooler), committed
        together with the run's outcome.
        """
        async with self._conn() as conn, conn.transaction():
            if not await conn.fetchval(q("job_try_lock"), job):
                yield "running in another process"
                return
            if not await conn.fetchval(q("job_claim_run"), job, min_gap):
                yield "ran recently in another process"
                return
            run = JobRun()
            yield run
            await conn.execute(q("job_finished"), job, run.error)

    async def delete_finished_deliveries(self, before: datetime, batch: int) -> int:
        async with self._conn() as conn:
            return row_count(await conn.execute(q("retention_deliveries"), before, batch))

    async def delete_delivered_events(self, before: datetime, batch: int) -> int:
        async with self._conn() as conn:
            return row_count(await conn.execute(q("retention_events"), before, batch))

    async def queue_depths(self) -> dict[tuple[str, str], int]:
        """Deliveries waiting or given up, by (destination kind, state)."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("delivery_queue_depths"))
        return {(row["channel"], row["state"]): int(row["n"]) for row in rows}
