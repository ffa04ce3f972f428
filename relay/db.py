"""The connection pool, the migrations runner and the named SQL queries."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from relay.aio import sleep_or_stop
from relay.errors import SetupError
from relay.pooler import PoolConnections, PoolerSetting

logger = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATION_LOCK = "relay.migrate"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)

# Errors after which the same operation may succeed on a fresh connection.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def sql_file(name: str) -> str:
    return resources.files("relay.sql").joinpath(name).read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """The named queries of ``sql/queries.sql`` (``-- name: x`` headers)."""
    text = sql_file("queries.sql")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def q(name: str) -> str:
    return queries()[name]


def migration_files() -> list[tuple[str, str]]:
    files = sorted(
        p.name for p in resources.files("relay.sql").iterdir() if re.match(r"^\d{4}_.*\.sql$", p.name)
    )
    return [(name.removesuffix(".sql"), sql_file(name)) for name in files]


def backoff(attempt: int, *, base: float = 0.05, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter: attempt 0 is (almost) immediate."""
    return random.uniform(0, min(cap, base * 2**attempt))


class FailureStreak:
    """Consecutive failures of one background loop: log the first and every 20th, and
    back off (exponentially, with jitter) before the next try. ``reset()`` on success."""

    def __init__(self, what: str, *, base: float = 0.1, cap: float = 5.0, log_every: int = 20) -> None:
        self.what, self.base, self.cap, self.log_every = what, base, cap, log_every
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    async def pause(self, exc: BaseException, stop: asyncio.Event) -> None:
        delay = backoff(self.count, base=self.base, cap=self.cap)
        self.count += 1
        if self.count == 1 or self.count % self.log_every == 0:
            logger.warning("%s (%s: %s); retrying in %.2fs", self.what, type(exc).__name__, exc, delay)
        await sleep_or_stop(stop, delay)


async def create_pool(
    dsn: str, *, pooler: PoolerSetting = "auto", listen_dsn: str | None = None, **kwargs: Any
) -> asyncpg.Pool:
    """A pool that opens no connection up front, so start-up works while the database is away.

    ``pooler`` (``RELAY_DATABASE_POOLER``) says whether ``dsn`` goes through a transaction
    pooler; ``auto`` finds out on the first connection (see :mod:`relay.pooler`), which
    also logs an error when ``listen_dsn`` is that same pooler.
    """
    connections = PoolConnections(dsn, pooler, listen_dsn=listen_dsn)
    kwargs.setdefault("connect", connections.connect)
    kwargs.setdefault("reset", connections.reset)
    kwargs.setdefault("min_size", 0)
    kwargs.setdefault("max_size", 10)
    kwargs.setdefault("max_inactive_connection_lifetime", 60.0)
    kwargs.setdefault("server_settings", {"application_name": "relay"})
    return await asyncpg.create_pool(dsn, **kwargs)


async def connect_once(dsn: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    """A connection for a command's few queries (`relay migrate`, `relay webhooks`, `relay check`).

    Without a statement cache it works through a transaction pooler and leaves no
    prepared statement behind in a session the pooler lends to someone else; a command
    runs too few queries for the cache to pay.
    """
    return await asyncpg.connect(dsn, timeout=connect_timeout, statement_cache_size=0)


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: asyncio.Event | None = None,
    cap: float = 5.0,
) -> T:
    """Run ``operation`` until it does not fail with a transient (connection) error."""
    attempt = 0
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            if stop is not None and stop.is_set():
                raise
            delay = backoff(attempt, base=0.1, cap=cap)
            attempt += 1
            if attempt in (1, 10) or attempt % 50 == 0:
                logger.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                await sleep_or_stop(stop, delay)


async def booking_table_exists(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("""SELECT to_regclass('"Booking"') IS NOT NULL""") is True


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations and attach the trigger; return the names applied.

    Idempotent, and safe when several processes run it at once: everything happens in
    one transaction behind an advisory lock, so a second runner waits and finds nothing
    left to do.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", MIGRATION_LOCK)
        if not await booking_table_exists(conn):
            raise SetupError(
                'table "Booking" does not exist in this database (search_path: '
                + str(await conn.fetchval("SHOW search_path"))
                + "); create it with your application's migrations, then run `relay migrate` again"
            )
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS relay;
            CREATE TABLE IF NOT EXISTS relay.schema_migrations (
                name       text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM relay.schema_migrations")}
        applied = []
        for name, text in migration_files():
            if name in done:
                continue
            await conn.execute(text)
            await conn.execute("INSERT INTO relay.schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
            logger.info("applied migration %s", name)
        if applied or not await trigger_attached(conn):
            await conn.execute(sql_file("attach_trigger.sql"))
        return applied


async def trigger_attached(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            """
            SELECT EXISTS (
                SELECT 1 FROM pg_trigger t
                JOIN pg_proc p ON p.oid = t.tgfoid
                JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE t.tgrelid = to_regclass('"Booking"')
                  AND n.nspname = 'relay' AND p.proname = 'notify_booking_changes'
                  AND NOT t.tgisinternal
            )
            """
        )
    )
