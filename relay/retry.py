"""Retrying, in one place: the delivery retry schedule, Retry-After, and the backoff of the
background loops and of database writes through dropped connections."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TypeVar

from relay.aio import sleep_or_stop
from relay.db import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SCHEDULE = "0,5s,5m,30m,2h,5h,10h,10h"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
MAX_RETRY_AFTER = 24 * 3600.0  # a receiver's Retry-After is honoured up to this


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), at most
    ``MAX_RETRY_AFTER``; None when absent or unreadable, 0 for a date in the past."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_delay(text: str) -> float:
    """Parse one delay such as ``5m``, ``1.5h``, ``250ms`` or ``30`` (seconds) into seconds."""
    match = _DELAY.match(text)
    if not match:
        raise ValueError(f"{text.strip()!r} is not a delay (a number with an optional ms/s/m/h/d unit)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class RetrySchedule:
    """Element *i* of ``delays`` is the wait before attempt *i+1*; after the last, give up."""

    delays: tuple[float, ...]
    jitter: float = 0.1

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        parts = [p for p in text.split(",")]
        if not text.strip() or any(not p.strip() for p in parts):
            raise ValueError("expected a comma-separated list of delays, e.g. 0,5s,5m")
        return cls(tuple(parse_delay(p) for p in parts))

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    def delay_before(self, attempt: int, *, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before attempt number ``attempt`` (1-based), or None when exhausted.

        Non-zero delays get up to ``jitter`` (as a fraction) added so that retries of
        many deliveries do not arrive at a receiver in one burst.
        """
        if attempt < 1 or attempt > len(self.delays):
            return None
        base = self.delays[attempt - 1]
        if base <= 0 or self.jitter <= 0:
            return base
        return base * (1 + (rng or random).random() * self.jitter)

    def next_delay(self, attempts_made: int, retry_after: float | None = None) -> float | None:
        """Delay before the next attempt after ``attempts_made`` attempts, honouring Retry-After."""
        delay = self.delay_before(attempts_made + 1)
        if delay is None:
            return None
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def __str__(self) -> str:
        return ",".join(f"{d:g}s" for d in self.delays)


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


def handback_delay() -> float:
    """How long a delivery handed back after a database error before its send waits (up to
    2 s, jittered, so held deliveries do not all hit a recovering database at once)."""
    return backoff(2, base=0.5, cap=5.0)


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
