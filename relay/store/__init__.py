"""Every query Relay runs, as named methods over the named queries of ``sql/queries.sql``.

Callers say what they want (``advance``, ``claim``, ``record``, ``add_endpoint``);
only this package knows the SQL, as procrastinate's ``manager.py`` does. A ``Store``
runs over a pool (a relay process) or one connection (the CLI, the listener's probe)
and never closes it. Its methods live by concern: ``events`` (the live path and readers),
``deliveries`` (planning, claiming, recording, shared jobs), ``destinations`` (webhook
endpoints, push subscriptions), ``presence``, ``capture`` (sources, modes, wal's slot);
the schema's (migrations, checks) here.
"""

from __future__ import annotations

import logging

import asyncpg

from relay.errors import SetupError
from relay.queries import Queries, migration_files, q, queries, sql_file
from relay.store.capture import CaptureQueries
from relay.store.deliveries import Attempt, ClaimRoom, DeliveryQueries, JobRun
from relay.store.destinations import DestinationQueries
from relay.store.events import EventQueries
from relay.store.presence import PresenceQueries

__all__ = [
    "Attempt",
    "ClaimRoom",
    "JobRun",
    "Store",
    "migrate",
    "migration_files",
    "q",
    "queries",
    "sql_file",
]

logger = logging.getLogger(__name__)


class Store(EventQueries, DeliveryQueries, DestinationQueries, PresenceQueries, CaptureQueries, Queries):
    """Relay's queries over ``db`` (an asyncpg pool or connection, never closed here), one
    part per concern in this package's modules; the schema's own here."""

    # ------------------------------------------------------------------ schema

    async def server_version(self) -> str:
        async with self._conn() as conn:
            return str(await conn.fetchval(q("server_version")))

    async def migrations_applied(self) -> int | None:
        """How many migrations are applied; None when the relay schema is missing."""
        async with self._conn() as conn:
            if not await conn.fetchval(q("schema_present")):
                return None
            return int(await conn.fetchval(q("migrations_count")))

    async def trigger_attached(self) -> bool:
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("trigger_attached")))

    async def booking_captured(self) -> bool:
        """The trigger on "Booking", or in wal mode "Booking" in the publication."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("booking_captured")))

    async def migrate(self) -> list[str]:
        """Apply pending migrations and attach the trigger; return the names applied.

        Idempotent, and safe when several processes run it at once: everything happens in
        one transaction behind an advisory lock, so a second runner waits and finds
        nothing left to do.
        """
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("migrate_lock"))
            if not await conn.fetchval(q("booking_table_exists")):
                raise SetupError(
                    'table "Booking" does not exist in this database (search_path: '
                    + str(await conn.fetchval(q("search_path")))
                    + "); create it with your application's migrations, then run `relay migrate` again"
                )
            await conn.execute(q("migrations_table"))
            done = {r["name"] for r in await conn.fetch(q("migrations_applied"))}
            applied = []
            for name, text in migration_files():
                if name in done:
                    continue
                await conn.execute(text)
                await conn.execute(q("migration_record"), name)
                applied.append(name)
                logger.info("applied migration %s", name)
            if applied or not await conn.fetchval(q("booking_captured")):
                # The built-in source, through the path every source takes.
                await conn.execute(q("attach_booking"))
            return applied


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """``relay migrate`` on ``conn`` (see ``Store.migrate``)."""
    return await Store(conn).migrate()
