"""Shared pieces of the benchmarks: a private PostgreSQL, percentiles, result rows."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from relay.embedded import EmbeddedPostgres

Row = dict[str, Any]


@contextmanager
def server(durable: bool = True) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the bench's own, so figures do not depend on what else runs here."""
    pg = EmbeddedPostgres(durable=durable)
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def row(
    metric: str,
    relay: float,
    baseline: float,
    goal: str,
    unit: str = "",
    *,
    ratio: float | None = None,
    difference: bool = False,
) -> Row:
    """One line of the report; ``difference`` compares by relay - baseline instead of a ratio."""
    if ratio is None:
        if difference:
            ratio = relay - baseline
        else:
            ratio = relay / baseline if baseline else float("nan")
    made: Row = {
        "metric": metric,
        "relay": relay,
        "baseline": baseline,
        "ratio": ratio,
        "goal": goal,
        "unit": unit,
    }
    if difference:
        made["ratio_kind"] = "difference (ms)"
    return made


@contextmanager
def database_url(durable: bool = False) -> Iterator[str]:
    """``BENCH_DATABASE_URL`` when set, else the URL of a server of the bench's own."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield url
        return
    with server(durable=durable) as pg:
        yield pg.url
