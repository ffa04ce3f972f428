"""Small asyncio helpers shared by the background loops."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_any(*events: asyncio.Event, timeout: float | None) -> None:  # noqa: ASYNC109
    """Return when any of ``events`` is set, or after ``timeout`` seconds."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
