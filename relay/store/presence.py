"""Who is online: each process's counts in relay.presence, under a lease."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from relay.queries import Queries, q


class PresenceQueries(Queries):
    # ------------------------------------------------------------------ presence

    async def presence_register(self, process_id: UUID, lease: float, slot: str | None) -> bool:
        """Take or renew the process's lease; True when its row was missing (see the query)."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("presence_register"), process_id, lease, slot))

    async def presence_flush(
        self, process_id: UUID, counts: Sequence[tuple[str, str, int]], channel: str, notices: Sequence[str]
    ) -> None:
        """Store the process's counts ((merchant, user, connections), 0 deleting) and NOTIFY
        ``channel`` with each of ``notices``. ForeignKeyViolationError: the process's lease
        ran out (register again)."""
        merchants, users, connections = [c[0] for c in counts], [c[1] for c in counts], [c[2] for c in counts]
        async with self._conn() as conn:
            await conn.execute(
                q("presence_flush"), process_id, merchants, users, connections, channel, list(notices)
            )

    async def presence_remove(
        self, leaving: UUID | None = None, slot: str | None = None, besides: UUID | None = None
    ) -> list[str]:
        """Remove expired processes, ``leaving``, and those of ``slot`` but ``besides``; the
        merchants whose presence changed."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("presence_remove"), leaving, slot, besides)
        return [r["merchant_id"] for r in rows]

    async def presence_counts(self, merchants: Sequence[str], besides: UUID) -> list[tuple[str, str, int]]:
        """(merchant, user, connections) over every live process but ``besides``."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("presence_counts"), list(merchants), besides)
        return [(r["merchant_id"], r["user_id"], r["connections"]) for r in rows]
