"""Connections: the pool (direct or through a transaction pooler), one-off command
connections, and the database errors worth retrying."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.pooler import PoolConnections, PoolerSetting

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
    # Class 40 (a deadlock detected, a serialization failure): PostgreSQL rolled the
    # transaction back so that it can be run again.
    asyncpg.exceptions.TransactionRollbackError,
)


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
