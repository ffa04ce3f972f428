"""Print benchmark rows as a table and write them to bench/results/."""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Row

RESULTS = Path(__file__).parent / "results"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(rows: list[Row]) -> str:
    lines = ["| metric | Relay | baseline | ratio | goal |", "|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = _fmt(r["ratio"]) + (" ms" if r.get("ratio_kind") == "difference (ms)" else "")
        lines.append(
            f"| {r['metric']} | {_fmt(r['relay'])} | {_fmt(r['baseline'])} | {ratio} | {r['goal']} |"
        )
    return "\n".join(lines)


def measured(rows: list[Row]) -> str:
    """When each suite in the report last ran (a run of some suites keeps the others' rows)."""
    when: dict[str, str] = {}
    for r in rows:
        when.setdefault(str(r.get("suite", "?")), str(r.get("measured", "?")))
    return "Suites measured: " + ", ".join(f"{suite} {day}" for suite, day in when.items()) + "."


def print_rows(rows: list[Row]) -> None:
    print(markdown(rows))


def write(rows: list[Row], name: str = "latest") -> Path:
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    text = f"Written {meta['when']} on {meta['machine']}. {measured(rows)}\n\n{markdown(rows)}\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path
