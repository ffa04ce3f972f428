"""The retry schedule as a frozen value object."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

DEFAULT_SCHEDULE = "0,5s,5m,30m,2h,5h,10h,10h"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
MAX_RETRY_AFTER = 24 * 3600.0


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
