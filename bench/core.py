"""Core pipeline: hand-off latency, listener recovery (what the trigger costs writes: bench/capture.py).

* Hand-off latency: commit -> Relay's feed hands the event on, against a bare asyncpg
  LISTEN client receiving the same NOTIFYs in the same process (the floor).
* Recovery: pg_terminate_backend on the listener, time until it listens again.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

import asyncpg

from bench.capture import make_database
from bench.common import Row, percentile, row, server
from relay import app
from relay.config import Settings
from relay.events import Event


async def handoff_latency(url: str, events: int, interval: float) -> list[Row]:
    settings = Settings(database_url=url, http_port=0, probe_interval=2.0)
    sent: dict[str, float] = {}
    bare: dict[str, float] = {}
    relayed: dict[str, float] = {}

    def on_bare(_c: object, _p: int, _ch: str, payload: str) -> None:
        booking = payload.split('"id" : "', 1)[1].split('"', 1)[0]
        bare[booking] = time.perf_counter()

    listener = await asyncpg.connect(url)
    await listener.add_listener("booking_created", on_bare)
    writer = await asyncpg.connect(url)
    async with app.start(settings, serve_http=False) as relay:

        def on_relayed(evs: Sequence[Event]) -> None:
            now = time.perf_counter()
            for e in evs:
                relayed[str(e.data["id"])] = now

        relay.feed.subscribe(on_relayed)
        await relay.listener.connected.wait()
        await relay.feed.started.wait()
        for i in range(events):
            booking = f"lat-{i}"
            sent[booking] = time.perf_counter()
            await writer.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""", booking
            )
            await asyncio.sleep(interval)
        deadline = time.monotonic() + 10
        while (len(relayed) < events or len(bare) < events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await listener.close()
    await writer.close()
    relay_ms = [(relayed[b] - sent[b]) * 1000 for b in sent if b in relayed]
    bare_ms = [(bare[b] - sent[b]) * 1000 for b in sent if b in bare]
    rows = []
    for p in (50, 99):
        r, b = percentile(relay_ms, p), percentile(bare_ms, p)
        rows.append(
            row(
                f"commit -> hand-off latency p{p} (ms)",
                r,
                b,
                "p99 <= floor + 1 ms" if p == 99 else "",
                unit="ms",
                difference=True,
            )
        )
    return rows


async def recovery(url: str, kills: int) -> list[Row]:
    settings = Settings(
        database_url=url,
        http_port=0,
        probe_interval=2.0,
        reconnect_max_delay=1.0,
    )
    times: list[float] = []
    admin = await asyncpg.connect(url)
    async with app.start(settings, serve_http=False) as relay:
        await relay.listener.connected.wait()
        for _ in range(kills):
            old = relay.listener.backend_pid
            started = time.perf_counter()
            await admin.execute("SELECT pg_terminate_backend($1)", old)
            while relay.listener.backend_pid in (None, old):
                await asyncio.sleep(0.001)
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)
    await admin.close()
    return [
        row(
            "listener recovery after pg_terminate_backend p50 (ms)",
            percentile(times, 50),
            1000,
            "< 1000 ms",
            unit="ms",
        ),
        row(
            "listener recovery after pg_terminate_backend p99 (ms)",
            percentile(times, 99),
            1000,
            "< 1000 ms",
            unit="ms",
        ),
    ]


async def _run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with server(durable=True) as pg:
        url = await make_database(pg, "latency", "notify")
        rows += await handoff_latency(url, events=50 if quick else 300, interval=0.01)
        rows += await recovery(url, kills=5 if quick else 20)
    return rows


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    from bench.report import print_rows

    print_rows(run(quick="--quick" in sys.argv))
