"""Shared pieces of the benchmarks: a private PostgreSQL, percentiles, result rows."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.embedded import EmbeddedPostgres

Row = dict[str, Any]


@contextmanager
def server(durable: bool = True) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the bench's own, so figures do not depend on what else runs here."""
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="relay-bench-")) / "pgdata", durable=durable)
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()
        shutil.rmtree(pg.datadir.parent, ignore_errors=True)


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
    metric: str, relay: float, baseline: float, goal: str, *, unit: str = "", ratio: float | None = None
) -> Row:
    if ratio is None:
        ratio = relay / baseline if baseline else float("nan")
    return {
        "metric": metric,
        "relay": relay,
        "baseline": baseline,
        "ratio": ratio,
        "goal": goal,
        "unit": unit,
    }
