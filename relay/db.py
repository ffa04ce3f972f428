"""The connection pool and the database errors worth retrying."""

from __future__ import annotations

from typing import Any

import asyncpg

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


async def create_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    """A pool that opens no connection up front, so start-up works while the database is away."""
    kwargs.setdefault("min_size", 0)
    kwargs.setdefault("max_size", 10)
    kwargs.setdefault("max_inactive_connection_lifetime", 60.0)
    kwargs.setdefault("server_settings", {"application_name": "relay"})
    return await asyncpg.create_pool(dsn, **kwargs)
