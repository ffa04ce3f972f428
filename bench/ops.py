"""Operations: what retention and a /metrics scrape cost.

* Retention: ``relay.scheduler.apply_retention`` on N old events with one finished
  delivery each (in batches, with the "sequenced, planned, all deliveries finished"
  checks), against a bare ``DELETE FROM relay.events WHERE created_at < cutoff`` of the
  same rows (the floor: no checks, one statement).
* Scrape: ``GET /metrics`` on a running relay (refreshes the database gauges), against
  ``GET /healthz`` on the same server (the floor: an HTTP round trip).
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import httpx

from bench.common import Row, median, percentile, row, server
from relay import app
from relay.config import Settings
from relay.db import create_pool
from relay.scheduler import apply_retention
from relay.store import Store, migrate, q

BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""


async def _database(admin_url: str, name: str, events: int) -> str:
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(BOOKING)
        await migrate(conn)
        await conn.execute(
            """INSERT INTO "Booking" (id, "merchantId", status)
               SELECT 'b' || i, 'm' || (i % 3), 'PENDING' FROM generate_series(1, $1) AS i""",
            events,
        )
        while await conn.fetchval(q("sequence_events")):
            pass
        await conn.execute("UPDATE relay.events SET created_at = now() - interval '30 days'")
        await conn.execute(
            """INSERT INTO relay.deliveries (event_id, channel, target_id, state, attempts, completed_at)
               SELECT id, 'webhook', 1, 'succeeded', 1, now() - interval '30 days' FROM relay.events"""
        )
        await conn.execute("VACUUM ANALYZE relay.events")
        await conn.execute("VACUUM ANALYZE relay.deliveries")
    finally:
        await conn.close()
    return url


async def retention(admin_url: str, events: int) -> list[Row]:
    relay_url = await _database(admin_url, "retention_relay", events)
    bare_url = await _database(admin_url, "retention_bare", events)

    pool = await create_pool(relay_url)
    try:
        started = time.perf_counter()
        deliveries, deleted = await apply_retention(Store(pool), 14)
        relay_s = time.perf_counter() - started
    finally:
        await pool.close()
    assert deleted == events and deliveries == events, (deliveries, deleted)

    conn = await asyncpg.connect(bare_url)
    try:
        started = time.perf_counter()
        await conn.execute("DELETE FROM relay.events WHERE created_at < now() - interval '14 days'")
        bare_s = time.perf_counter() - started
    finally:
        await conn.close()
    return [
        row(
            f"retention: events (+1 delivery each) removed per second, {events:,} rows",
            events / relay_s,
            events / bare_s,
            "same order as a bare DELETE",
            unit="rows/s",
        )
    ]


async def scrape(admin_url: str, requests: int) -> list[Row]:
    url = await _database(admin_url, "scrape", 1000)
    settings = Settings(database_url=url, http_host="127.0.0.1", http_port=0)
    async with app.start(settings) as relay:
        await asyncio.wait_for(relay.listener.connected.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            timings: dict[str, list[float]] = {"/metrics": [], "/healthz": []}
            for _ in range(requests):
                for path, spent in timings.items():
                    started = time.perf_counter()
                    response = await client.get(path)
                    spent.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
    return [
        row(
            "GET /metrics, median ms",
            median(timings["/metrics"]),
            median(timings["/healthz"]),
            "a few ms above /healthz",
            unit="ms",
        ),
        row(
            "GET /metrics, p99 ms",
            percentile(timings["/metrics"], 99),
            percentile(timings["/healthz"], 99),
            "under 50 ms",
            unit="ms",
        ),
    ]


async def _run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with server(durable=False) as pg:
        rows += await retention(pg.url, events=20_000 if quick else 100_000)
        rows += await scrape(pg.url, requests=50 if quick else 300)
    return rows


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    from bench.report import print_rows

    print_rows(run(quick="--quick" in sys.argv))
