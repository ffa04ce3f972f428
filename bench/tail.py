"""The live path's latency tail: one /ws client at a steady ~80 events/s.

The 1,000-client rows of bench/live.py spread the load; this suite looks at one calendar
page, where any stall on the relay's path (a queued sequencer call, a dispatcher wake-up,
a garbage collection, a flush) shows up in the p99. Commit -> client against a bare
asyncpg LISTEN in the same run (the writer LISTENs itself), for three relay variants, so
each cause can be read off the difference:

* ``relay``: ``relay run`` as shipped;
* ``relay, gc off``: the same process with the cyclic garbage collector disabled;
* ``relay, no webhooks``: the same, with no webhook endpoint (the dispatcher plans nothing);
  the other two have 5 endpoints on the webhook benchmark's Node.js receiver (answering
  204), as in a real deployment, so delivery work runs beside the live path.

``python -m bench.tail [--quick]``; ``run(quick) -> rows``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from bench.common import row as _row
from bench.live import (
    BOOKING,
    Plan,
    Row,
    Writer,
    clients,
    measure_latency,
    npm_install,
    raise_fd_limit,
    serve,
)
from bench.receiver import free_port, node_receiver
from bench.webhooks import LOOPBACK
from relay.embedded import EmbeddedPostgres
from relay.store import Store, migrate
from relay.webhooks.endpoints import add_endpoint

RATE = 80.0
GC_OFF = "import gc, sys; gc.disable(); gc.freeze = lambda: None; sys.argv = ['relay', 'run']; "
GC_OFF += "from relay.cli import main; sys.exit(main())"


async def variant(dsn: str, argv: list[str] | None, seconds: float) -> dict[str, float]:
    os.environ["RELAY_EGRESS_ALLOW"] = "127.0.0.0/8"
    async with Writer.open(dsn) as writer, serve("relay", dsn, argv=argv) as server:
        async with clients("ws", server.url, ["m0"]) as gen:
            await asyncio.sleep(1)
            return await measure_latency(writer, gen, Plan(merchants=1, rate=RATE, seconds=seconds), 1)


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
        with node_receiver(port):
            url = f"http://127.0.0.1:{port}"
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
