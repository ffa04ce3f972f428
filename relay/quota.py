"""Per-key limits of the dispatcher's sender (per destination, merchant and host)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
# In hand per key: enough that a claim's round trip (10 ms and more on a loaded machine)
# is over before what is in hand runs out (twice the limit left a one-merchant burst with
# fewer than its 32 sends in flight half the time; measured with bench/webhooks.py).
AHEAD = 4
HELD = 16  # attempted deliveries held until their outcome is recorded, per unit of concurrency


class Quota(Generic[K]):
    """Sends in flight per key, at most ``limit``; and the deliveries this process has in hand
    per key (claimed, attempt not over), at most ``cap`` (``AHEAD`` times the limit, so the
    next ones are claimed while the first are sent). Claims take no more than a key's room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cap = limit * AHEAD
        self.held: Counter[K] = Counter()
        self._slots: dict[K, asyncio.Semaphore] = {}

    def full(self, key: K) -> bool:
        return self.held[key] >= self.cap

    def slot(self, key: K) -> asyncio.Semaphore:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(self.limit)
        return slot

    def hold(self, key: K) -> None:
        self.held[key] += 1

    def drop(self, key: K) -> None:
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]
            slot = self._slots.get(key)
            if slot is not None and not slot.locked():
                del self._slots[key]
