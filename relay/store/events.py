"""Events by position, and the connection's health: what the live path and the readers run."""

from __future__ import annotations

from relay.events import Event
from relay.queries import Queries, q


class EventQueries(Queries):
    # ------------------------------------------------------------------ events

    async def position(self) -> int:
        """The last position sequenced so far."""
        async with self._conn() as conn:
            return int(await conn.fetchval(q("max_position")))

    async def advance(self, after: int, limit: int) -> list[Event]:
        """Sequence what has committed, then the events after position ``after``: the feed's pass."""
        async with self._conn() as conn:
            return [Event.from_row(r) for r in await conn.fetch(q("advance"), after, limit)]

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """The events after position ``after``, without sequencing (the poller does, in poll mode)."""
        async with self._conn() as conn:
            return [Event.from_row(r) for r in await conn.fetch(q("events_after"), after, limit)]

    async def oldest_position(self) -> int:
        """The position just before the oldest retained event."""
        async with self._conn() as conn:
            return int(await conn.fetchval(q("oldest_position")))

    async def merchant_events(self, merchant_id: str, after: int, limit: int) -> list[Event]:
        async with self._conn() as conn:
            rows = await conn.fetch(q("merchant_events_after"), merchant_id, after, limit)
        return [Event.from_row(r) for r in rows]

    # ------------------------------------------------------------------ health

    async def ping(self, within: float | None = None) -> None:
        """A round trip; TimeoutError if it takes longer than ``within`` seconds."""
        async with self._conn() as conn:
            await conn.fetchval(q("ping"), timeout=within)

    async def backend_pid(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(q("backend_pid")))

    async def notify_queue_usage(self) -> float:
        async with self._conn() as conn:
            return float(await conn.fetchval(q("notify_queue_usage")))

    async def notify(self, channel: str, payload: str) -> None:
        async with self._conn() as conn:
            await conn.execute(q("notify"), channel, payload)
