"""Load: thousands of /ws connections held while events flow; drops, latency, RSS and CPU.

``relay run`` serves on a private PostgreSQL as a subprocess; the Node load generator of
bench/live (``bench/seed-node/loadgen.js``) holds the WebSocket connections in a process of
its own (spread evenly over the merchants); this process commits bookings at a fixed rate
and LISTENs itself, which gives the bare-listener floor (commit -> NOTIFY received), the
baseline of the latency rows.

* drops: for every committed event, the clients of its merchant that never received it
  (whether they stayed connected or the relay closed them), summed;
* latency: every (commit, delivery) pair, p50 / p99 / max, against the bare LISTEN floor;
* the relay process's RSS (idle before the clients connect = baseline; at the end of the
  hold) and CPU over the hold, from /proc/<pid>.

Full: 5,000 connections over 50 merchants held for 60 s at 200 events/s. ``--quick``: 500
connections for 10 s. ``python -m bench.load [--quick]``; ``run(quick) -> rows``.

The full run also holds the same load on the relay as it was before presence existed
(``BEFORE_PRESENCE``, checked out from this repository's history into a temporary
worktree, on a database of its own) and reports the p99 against it: presence must cost
the live path at most 10 %. Both are held in alternation, ``ROUNDS`` times each.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Row, median, percentile, row, server
from bench.live import BOOKING, LoadGen, Writer, clients, npm_install, raise_fd_limit, rss_kb, serve
from relay.store import migrate

NAN = float("nan")
# main just before presence landed: the relay whose load p99 presence must stay within 10 % of.
BEFORE_PRESENCE = "3a931a9"
ROUNDS = 2
REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    connections: int = 5000
    merchants: int = 50
    rate: float = 200.0
    seconds: float = 60.0
    sample_every: float = 1.0  # seconds between RSS samples
    chunk: int = 100_000  # records per read from the generator once the hold is over

    @classmethod
    def quick(cls) -> Plan:
        return cls(connections=500, merchants=10, seconds=10.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


class Tally:
    """Receipts per (booking, client): latency pairs, distinct receipts and duplicates."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.latencies: list[float] = []
        self.seen: set[tuple[str, int]] = set()
        self.duplicates = 0

    async def collect(self, gen: LoadGen, chunk: int) -> None:
        """Read every record, in chunks, after the hold (reading during it would stall the
        generator's event loop and inflate the latencies it timestamps)."""
        while records := (await gen.ask(f"take {chunk}", wait=120))["records"]:
            self.add(records)

    def add(self, records: list[tuple[str, float, int]]) -> None:
        for booking, at, client in records:
            key = (booking, client)
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            committed = self.writer.committed.get(booking)
            if committed is not None:
                self.latencies.append(at - committed)


async def hold(plan: Plan, dsn: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    merchants = [f"m{i % plan.merchants}" for i in range(plan.connections)]
    per_merchant = Counter(merchants)
    async with Writer.open(dsn) as writer, serve("relay", dsn, argv=argv) as relay:
        await asyncio.sleep(1)
        idle_rss = rss_kb(relay.pid)
        async with clients("ws", relay.url, merchants, tag=True) as gen:
            await asyncio.sleep(1)
            connected_rss = rss_kb(relay.pid)
            tally = Tally(writer)
            committed_by: Counter[str] = Counter()
            gen_pid = gen.process.pid
            cpu_before, gen_cpu_before = cpu_seconds(relay.pid), cpu_seconds(gen_pid)
            wall_before = time.monotonic()
            peak_rss = connected_rss
            total = int(plan.rate * plan.seconds)
            next_sample = time.monotonic() + plan.sample_every
            for i in range(total):
                delay = wall_before + i / plan.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                merchant = f"m{i % plan.merchants}"
                await writer.commit(merchant, "load")
                committed_by[merchant] += 1
                if time.monotonic() >= next_sample:
                    peak_rss = max(peak_rss, rss_kb(relay.pid))
                    next_sample = time.monotonic() + plan.sample_every
            held = time.monotonic() - wall_before
            cpu = (cpu_seconds(relay.pid) - cpu_before) / held
            gen_cpu = (cpu_seconds(gen_pid) - gen_cpu_before) / held
            end_rss = rss_kb(relay.pid)
            expected = sum(per_merchant[m] * n for m, n in committed_by.items())
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if (await gen.ask("stats"))["count"] >= expected:
                    break
                await asyncio.sleep(0.2)
            await tally.collect(gen, plan.chunk)
            closed = (await gen.ask("stats"))["closed"]
    floor = [writer.notified[b] - t for b, t in writer.committed.items() if b in writer.notified]
    return {
        "drops": expected - len(tally.seen),
        "duplicates": tally.duplicates,
        "closed": closed,
        "listen_missed": len(writer.committed) - len(floor),
        "p50": percentile(tally.latencies, 50),
        "p99": percentile(tally.latencies, 99),
        "max": max(tally.latencies, default=NAN),
        "floor_p50": percentile(floor, 50),
        "floor_p99": percentile(floor, 99),
        "floor_max": max(floor, default=NAN),
        "idle_rss_mb": idle_rss / 1024,
        "connected_rss_mb": connected_rss / 1024,
        "peak_rss_mb": max(peak_rss, end_rss) / 1024,
        "cpu": cpu * 100,
        "gen_cpu": gen_cpu * 100,
        "deliveries": expected,
    }


def rows(plan: Plan, r: dict[str, Any]) -> list[Row]:
    what = (
        f"{plan.connections} /ws, {plan.merchants} merchants, {plan.rate:g} events/s for {plan.seconds:g} s"
    )

    def difference(metric: str, relay: float, baseline: float, goal: str) -> Row:
        out = row(metric, relay, baseline, goal, unit="ms", ratio=relay - baseline)
        out["ratio_kind"] = "difference (ms)"
        return out

    return [
        row(f"load: deliveries missed ({what}; baseline: bare LISTEN)", r["drops"], r["listen_missed"], "0"),
        row(f"load: connections closed by the relay ({what})", r["closed"], NAN, "0"),
        row(f"load: duplicate deliveries ({what})", r["duplicates"], NAN, "0"),
        difference(
            f"load: commit->client p50 ms ({what}; baseline: bare LISTEN)", r["p50"], r["floor_p50"], ""
        ),
        difference(
            f"load: commit->client p99 ms ({what}; baseline: bare LISTEN)", r["p99"], r["floor_p99"], ""
        ),
        difference(
            f"load: commit->client max ms ({what}; baseline: bare LISTEN)", r["max"], r["floor_max"], ""
        ),
        row(
            f"load: relay peak RSS MB during the hold ({what}; baseline: idle)",
            r["peak_rss_mb"],
            r["idle_rss_mb"],
            "",
            unit="MB",
        ),
        row(f"load: relay CPU % of one core during the hold ({what})", r["cpu"], NAN, "", unit="%"),
        # Near 100 %, the single-threaded generator is the bottleneck and inflates the latencies.
        row(f"load: load generator CPU % of one core ({what})", r["gen_cpu"], NAN, "< 100", unit="%"),
    ]


async def prepare(dsn: str, relay: Sequence[str] | None = None) -> None:
    """The booking table and the schema: of this checkout, or migrated by ``relay`` (argv)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(BOOKING)
        if relay is None:
            await migrate(conn)
    finally:
        await conn.close()
    if relay is not None:
        subprocess.run([*relay, "migrate"], env={**os.environ, "DATABASE_URL": dsn}, check=True)


@contextmanager
def checkout(ref: str) -> Iterator[list[str] | None]:
    """The relay command of ``ref`` (this venv, that source tree), or None without history."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        tree = Path(tmp) / "tree"
        made = subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref], capture_output=True
        )
        if made.returncode:
            yield None
            return
        # This checkout's editable install maps relay.sql to its own sql/: give the old
        # tree's relay package its own migrations, found first.
        (tree / "relay" / "sql").symlink_to(tree / "sql")
        try:
            yield ["env", f"PYTHONPATH={tree}", sys.executable, "-m", "relay"]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


async def run_async(plan: Plan, dsn: str, relay: Sequence[str] | None = None) -> dict[str, Any]:
    raise_fd_limit()
    npm_install()
    await prepare(dsn, relay)
    return await hold(plan, dsn, None if relay is None else [*relay, "run"])


def held(plan: Plan, relay: Sequence[str] | None = None) -> dict[str, Any]:
    with server() as pg:
        return asyncio.run(run_async(plan, pg.url, relay))


def run(quick: bool = False) -> list[Row]:
    plan = Plan.quick() if quick else Plan()
    if quick:
        return rows(plan, held(plan))
    with checkout(BEFORE_PRESENCE) as before:
        if before is None:
            return rows(plan, held(plan))
        results, baselines = [], []
        for _ in range(ROUNDS):
            results.append(held(plan))
            baselines.append(held(plan, before))
    return [*rows(plan, results[0]), presence_cost(plan, results, baselines)]


def presence_cost(plan: Plan, results: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> Row:
    """Median p99 over the rounds, this relay against the one before presence."""
    relay = median([float(r["p99"]) for r in results])
    before = median([float(r["p99"]) for r in baselines])
    return row(
        f"load: commit->client p99 ms, with presence vs before it ({plan.connections} /ws, "
        f"median of {len(results)} rounds; baseline: relay at {BEFORE_PRESENCE})",
        relay,
        before,
        "<= 1.10",
    )


def main(argv: list[str]) -> int:
    results = run(quick="--quick" in argv)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
