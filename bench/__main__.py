"""`make bench`: run every benchmark in one go and write bench/results/latest.{md,json}.

`python -m bench --quick` runs shortened versions; `python -m bench core webhooks` runs some.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from datetime import UTC, datetime

from bench.common import Row
from bench.report import RESULTS, markdown, write

SUITES = ("core", "capture", "clients", "webhooks", "webpush", "live", "tail", "load", "ops")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.ERROR)
    quick = "--quick" in argv
    chosen = [a for a in argv if not a.startswith("-")] or list(SUITES)
    rows = []
    today = datetime.now(UTC).date().isoformat()
    for name in chosen:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"bench: no suite {name!r}, skipped", file=sys.stderr)
            continue
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        suite_rows = module.run(quick=quick)
        for r in suite_rows:
            r.setdefault("suite", name)
            r.setdefault("measured", today)
        rows += suite_rows
    if not quick and set(chosen) != set(SUITES):
        rows = merged_with_report(rows, chosen)
    path = write(rows, "quick" if quick else "latest")
    print(markdown(rows))
    print(f"\nwritten to {path}", file=sys.stderr)
    return 0


def merged_with_report(rows: list[Row], chosen: list[str]) -> list[Row]:
    """A run of some suites replaces their rows in the report of record, keeping the rest."""
    try:
        kept = json.loads((RESULTS / "latest.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return rows
    combined = [r for r in kept if r.get("suite") not in chosen] + rows
    order = {name: i for i, name in enumerate(SUITES)}
    return sorted(combined, key=lambda r: order.get(str(r.get("suite")), len(order)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
