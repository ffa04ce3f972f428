"""The connection pool and the database errors worth retrying."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from relay.aio import sleep_or_stop

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


async def create_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    """A pool that opens no connection up front, so start-up works while the database is away."""
    kwargs.setdefault("min_size", 0)
    kwargs.setdefault("max_size", 10)
    kwargs.setdefault("max_inactive_connection_lifetime", 60.0)
    kwargs.setdefault("server_settings", {"application_name": "relay"})
    return await asyncpg.create_pool(dsn, **kwargs)


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
