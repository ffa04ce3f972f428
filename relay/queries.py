"""The named queries of ``sql/`` and what every part of the store (``relay.store``) builds on:
a connection from a pool or the one given."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import Self

import asyncpg

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^\d{4}_.*\.sql$")


def sql_file(name: str) -> str:
    return resources.files("relay.sql").joinpath(name).read_text(encoding="utf-8")


@cache
def queries(file: str = "queries.sql") -> dict[str, str]:
    """The named queries of a file in ``sql/`` (``-- name: x`` headers)."""
    parts = _NAME.split(sql_file(file))
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def q(name: str) -> str:
    return queries()[name]


def migration_files() -> list[tuple[str, str]]:
    names = sorted(p.name for p in resources.files("relay.sql").iterdir() if _MIGRATION.match(p.name))
    return [(name.removesuffix(".sql"), sql_file(name)) for name in names]


def row_count(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12`` or ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class Queries:
    """Queries over ``db`` (an asyncpg pool or connection, never closed here)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[Self]:
        """These queries on one connection of the pool, kept until the block ends (itself,
        over a connection). A pool connection is reset when it goes back (``RESET ALL``, ...:
        one more round trip before the caller gets its rows); a loop that queries on every
        wake-up, the feed's, takes one connection for good instead."""
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield type(self)(conn)
        else:
            yield self

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db
