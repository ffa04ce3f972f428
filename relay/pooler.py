"""Transaction poolers in front of ``DATABASE_URL``: PgBouncer, Supavisor, a platform's pooled URL.

A transaction pooler lends a server session to a client for one transaction at a
time, so two things follow for the connections made through it:

* No server-side prepared statements. asyncpg names and caches a prepared statement
  per connection (``__asyncpg_stmt_1__``, ...); through a pooler another client's
  session already holds that name, and the query fails with
  ``DuplicatePreparedStatementError`` or ``InvalidSQLStatementNameError``. Old
  PgBouncer (before 1.21) cannot track them at all. Without the cache asyncpg sends
  every query as an unnamed statement parsed in the same message sequence as its
  execution, which any pooler serves.
* No session state. LISTEN, session advisory locks and SET outside a transaction
  would land on whichever session the pooler lends next. Relay does such work only
  on the listen connection (``RELAY_LISTEN_DATABASE_URL``), never on the pool.

The cache is worth keeping where it is safe: measured on a direct connection to a
local server, a query costs about three times as long without it (one more round
trip and a second parse). So ``RELAY_DATABASE_POOLER=auto`` (the default) finds out
which kind of connection ``DATABASE_URL`` gives, once, when the pool opens its first
connection; ``on`` and ``off`` say it outright. A statement whose best plan depends on
the values and the table's size of the moment (the delivery claim) is prepared afresh
each time instead (``Store.claim``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import asyncpg

from relay.store import Store

logger = logging.getLogger(__name__)

PoolerSetting = Literal["auto", "on", "off"]
PROBE_TIMEOUT = 10.0
# One connection's backend pid is read this many times in all (see shares_sessions).
_PROBE_READS = 4


async def _probe_connection(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn,
        statement_cache_size=0,
        timeout=PROBE_TIMEOUT,
        server_settings={"application_name": "relay-pooler-probe"},
    )


async def _backend_pid(conn: asyncpg.Connection) -> int:
    return await Store(conn).backend_pid()


async def shares_sessions(dsn: str) -> bool:
    """Whether connections to ``dsn`` go through a transaction pooler (share server sessions).

    Two probe connections, A and B, without a statement cache. A reads its backend pid;
    B opens a transaction and reads its own; A reads its pid again while B holds that
    transaction, and twice more after it. A direct connection, or a session pooler, keeps
    A on one backend throughout, never B's. A transaction pooler either lends B the
    session A has just given back (PgBouncer's default, last in first out) or moves A
    from session to session (``server_round_robin``).
    """
    first = await _probe_connection(dsn)
    try:
        second = await _probe_connection(dsn)
        try:
            seen = {await _backend_pid(first)}
            async with second.transaction():
                if await _backend_pid(second) in seen:
                    return True
                seen.add(await _backend_pid(first))
            for _ in range(_PROBE_READS - 2):
                seen.add(await _backend_pid(first))
            return len(seen) > 1
        finally:
            second.terminate()
    finally:
        first.terminate()


class PoolConnections:
    """Makes the pool's connections: with the statement cache on a direct connection, without
    it through a transaction pooler (detected on the first connection when ``auto``)."""

    def __init__(self, dsn: str, setting: PoolerSetting = "auto", *, listen_dsn: str | None = None) -> None:
        self._dsn = dsn
        self._listen_dsn = listen_dsn
        self.setting = setting
        self.pooled: bool | None = {"on": True, "off": False}.get(setting)
        self._lock = asyncio.Lock()
        self._announced = False

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg's ``create_pool(connect=...)``: called for every new pool connection."""
        if not self._announced:
            async with self._lock:
                if self.pooled is None:
                    async with asyncio.timeout(PROBE_TIMEOUT):
                        self.pooled = await shares_sessions(self._dsn)
                if not self._announced:
                    self._announce()
        if self.pooled:
            kwargs["statement_cache_size"] = 0
        return await asyncpg.connect(*args, **kwargs)

    def _announce(self) -> None:
        self._announced = True
        logger.info(
            "DATABASE_URL %s (RELAY_DATABASE_POOLER=%s)",
            "goes through a transaction pooler: the pool keeps no prepared statements"
            if self.pooled
            else "is a direct session connection: the pool caches prepared statements",
            self.setting,
        )
        if self.pooled and self._listen_dsn == self._dsn:
            logger.error(
                "LISTEN uses DATABASE_URL too, and a transaction pooler cannot LISTEN: set "
                "RELAY_LISTEN_DATABASE_URL to the database's direct (unpooled) URL; until then "
                "events may arrive only with the reconciliation poll"
            )

    async def reset(self, conn: asyncpg.Connection) -> None:
        """asyncpg's ``create_pool(reset=...)``: run on release, after any open transaction ended.

        Through a transaction pooler the session reset is skipped: the next transaction may
        land on any session, and the reset (``pg_advisory_unlock_all()``, ``RESET ALL``, ...)
        would act on whichever session the pooler lent for it, perhaps another client's.
        """
        if not self.pooled:
            query = conn.get_reset_query()
            if query:
                await conn.execute(query)
