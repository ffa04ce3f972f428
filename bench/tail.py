"""The live path's latency tail: one /ws client at a steady ~80 events/s.

The 1,000-client rows of bench/live.py spread the load; this suite looks at one calendar
page, where any stall on the relay's path (a queued sequencer call, a dispatcher wake-up,
a garbage collection, a flush) shows up in the p99. Commit -> client against a bare
asyncpg LISTEN in the same run (the writer LISTENs itself), for three relay variants, so
each cause can be read off the difference:

* ``relay``: ``relay run`` as shipped;
* ``relay, gc off``: the same process with the cyclic garbage collector disabled;
* ``relay, no webhooks``: the same, with no webhook endpoint (the dispatcher plans nothing);
  the default variant has 5 endpoints on a local receiver answering 204, as in a real
  deployment, so delivery work runs beside the live path.

``python -m bench.tail [--quick]``; ``run(quick) -> rows``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import asyncpg

from bench.common import percentile
from bench.common import row as _row
from bench.live import BOOKING, LoadGen, Row, Writer, clients, npm_install, raise_fd_limit, serve
from bench.webhooks import LOOPBACK, free_port, process, wait_http
from relay.embedded import EmbeddedPostgres
from relay.store import Store, migrate
from relay.webhooks.endpoints import add_endpoint

RATE = 80.0
GC_OFF = "import gc, sys; gc.disable(); gc.freeze = lambda: None; sys.argv = ['relay', 'run']; "
GC_OFF += "from relay.cli import main; sys.exit(main())"


async def measure(writer: Writer, gen: LoadGen, seconds: float) -> dict[str, float]:
    start = time.monotonic()
    total = int(RATE * seconds)
    ids = []
    for i in range(total):
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ids.append(await writer.commit("m0", "tail"))
    deadline = time.monotonic() + 10
    while (await gen.ask("count"))["count"] < total and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    records = (await gen.ask("dump"))["records"]
    latencies = [t - writer.committed[b] for b, t in records if b in writer.committed]
    floor = [writer.notified[b] - writer.committed[b] for b in ids if b in writer.notified]
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "floor_p50": percentile(floor, 50),
        "floor_p99": percentile(floor, 99),
        "received": len(latencies) / total,
    }


async def variant(dsn: str, argv: list[str] | None, seconds: float) -> dict[str, float]:
    os.environ["RELAY_EGRESS_ALLOW"] = "127.0.0.0/8"
    async with Writer.open(dsn) as writer, serve("relay", dsn, argv=argv) as server:
        async with clients("ws", server.url, ["m0"]) as gen:
            await asyncio.sleep(1)
            return await measure(writer, gen, seconds)


async def run_async(seconds: float) -> list[Row]:
    raise_fd_limit()
    npm_install()
    pg = EmbeddedPostgres()
    results: dict[str, dict[str, float]] = {}
    try:
        await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.url)
        await conn.execute(BOOKING)
        await migrate(conn)
        results["relay, no webhooks"] = await variant(pg.url, None, seconds)
        port = free_port()
        with process([sys.executable, "-m", "bench.webhook_receiver", str(port)]):
            url = f"http://127.0.0.1:{port}"
            await wait_http(f"{url}/stats")
            for i in range(5):
                await add_endpoint(Store(conn), merchant_id="m0", url=f"{url}/e{i}", allow=LOOPBACK, limit=5)
            results["relay"] = await variant(pg.url, None, seconds)
            results["relay, gc off"] = await variant(pg.url, [sys.executable, "-c", GC_OFF], seconds)
        await conn.close()
    finally:
        await asyncio.to_thread(pg.destroy)
    out: list[Row] = []
    for name, r in results.items():
        label = f"{name}: /ws commit->client p99 ms (1 client, {RATE:g} events/s; baseline: bare LISTEN)"
        out.append(_row(label, r["p99"], r["floor_p99"], "difference <= 5 ms", "ms", difference=True))
        out.append(_row(f"{name}: /ws commit->client max ms (same run)", r["max"], float("nan"), "", "ms"))
    return out


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(run_async(5.0 if quick else 30.0))


def main(argv: list[str]) -> int:
    for r in run(quick="--quick" in argv):
        print(f"{r['metric']}: relay {r['relay']:.2f} baseline {r['baseline']:.2f} ({r['goal']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
