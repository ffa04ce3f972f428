"""Webhook delivery: deliveries/s and commit -> receiver latency, against a bare aiohttp loop.

One ``relay run`` process delivers to the Node.js receiver (bench/node/receiver.js,
answering 204) at 50 and 500 endpoints. Throughput: a burst of events committed at
once, until every delivery is recorded as succeeded (commit -> receiver's 2xx ->
recorded). Latency: events committed one by one at ``LOAD`` deliveries/s, commit ->
arrival at the receiver, p50/p99. The baseline is a bare ``aiohttp.ClientSession``
loop (aiohttp is also Relay's engine, so it is the bare loop of the chosen client too)
in this process POSTing the same bodies to the same receiver from ``CONCURRENCY``
workers (throughput), and one POST per delivery as each event is committed (latency):
what sending costs with no database, queue, signature or retry in between. Each
throughput row gives the CPU of the relay, of PostgreSQL (every server process; n/a
for a BENCH_DATABASE_URL server elsewhere) and of the receiver (100 % = one core).

``python -m bench.webhooks [--quick]``; ``BENCH_RELAY_PYTHON_ARGS="-m cProfile -o relay.prof"``
profiles the relay process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import httpx

from bench.common import database_url, percentile, row
from bench.receiver import CpuClock, node_receiver
from relay.store import Store, migrate
from relay.webhooks.endpoints import add_endpoint

Row = dict[str, Any]
BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
JSON = {"content-type": "application/json"}
SUCCEEDED = "SELECT count(*) FROM relay.deliveries WHERE state = 'succeeded'"
# Every committed event sequenced and planned, and no delivery left to send: cheap to ask
# every 50 ms (the due index holds only unfinished deliveries), where counting the
# succeeded ones cost PostgreSQL more CPU the longer the table grew, during the burst.
SETTLED = """
SELECT NOT EXISTS (SELECT 1 FROM relay.events WHERE position IS NULL)
   AND (SELECT min(position) FROM relay.cursors) >= (SELECT last_position FROM relay.sequencer)
   AND NOT EXISTS (SELECT 1 FROM relay.deliveries WHERE state IN ('pending', 'sending'))
"""
# The bare loop's concurrency (bench/clients.py measures clients at the same).
CONCURRENCY = 100
LOAD = 1000.0  # deliveries/s offered in the latency runs (the p99 goal is stated at this load)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def postgres_pid(url: str) -> int | None:
    """The PostgreSQL server's main process, when it runs on this machine and we can see it."""
    conn = await asyncpg.connect(url)
    try:
        directory = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()
    try:
        with open(os.path.join(directory, "postmaster.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="relay-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


async def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered")
            await asyncio.sleep(0.1)


class Bench:
    def __init__(self, db_url: str, receiver: str) -> None:
        self.db_url = db_url
        self.receiver = receiver
        self.serial = 0

    @contextlib.asynccontextmanager
    async def conn(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.db_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def endpoints(self, count: int) -> None:
        async with self.conn() as conn:
            await conn.execute("DELETE FROM relay.webhook_endpoints; DELETE FROM relay.deliveries")
            for i in range(count):
                await add_endpoint(
                    Store(conn), merchant_id="bench", url=f"{self.receiver}/e{i}", allow=LOOPBACK, limit=count
                )

    async def arrivals(self) -> list[tuple[str, float]]:
        async with httpx.AsyncClient() as client:
            return [tuple(r) for r in (await client.get(f"{self.receiver}/stats")).json()]

    async def collect(self, expected: int, seconds: float = 120) -> list[tuple[str, float]]:
        got: list[tuple[str, float]] = []
        deadline = time.monotonic() + seconds
        while len(got) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            got += await self.arrivals()
        return got

    def ids(self, count: int) -> list[str]:
        first = self.serial
        self.serial += count
        return [f"k{i}" for i in range(first, first + count)]

    async def relay_throughput(self, events: int, endpoints: int) -> float:
        """Deliveries/s from one commit of ``events`` bookings until every delivery is recorded."""
        ids = self.ids(events)
        expected = events * endpoints
        async with self.conn() as conn:
            done = await conn.fetchval(SUCCEEDED)
            started = time.time()
            await conn.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) """
                """SELECT unnest($1::text[]), 'bench', 'NEW'""",
                ids,
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if await conn.fetchval(SETTLED):
                    break
            finished = time.time()
            succeeded = await conn.fetchval(SUCCEEDED) - done
            if succeeded != expected:
                raise RuntimeError(f"{succeeded} of {expected} deliveries succeeded within the burst")
        await self.collect(expected)
        return expected / (finished - started)

    async def relay_latency(self, seconds: float, rate: float, endpoints: int) -> list[float]:
        committed: dict[str, float] = {}
        async with self.conn() as conn:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                (booking,) = self.ids(1)
                await conn.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'bench', 'NEW')""",
                    booking,
                )
                committed[booking] = time.time()
                await asyncio.sleep(1 / rate)
        got = await self.collect(len(committed) * endpoints)
        return [(t - committed[b]) * 1000 for b, t in got if b in committed]

    def body(self, booking: str) -> bytes:
        message = {
            "type": "booking_created",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {
                "id": booking,
                "merchantId": "bench",
                "status": "NEW",
                "operation": "INSERT",
                "eventId": 1,
            },
        }
        return json.dumps(message, separators=(",", ":")).encode()

    async def baseline_throughput(self, events: int, endpoints: int) -> float:
        ids = self.ids(events)
        jobs = iter([(b, e) for b in ids for e in range(endpoints)])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:

            async def worker() -> None:
                for booking, endpoint in jobs:
                    url = f"{self.receiver}/e{endpoint}"
                    async with session.post(url, data=self.body(booking), headers=JSON) as response:
                        await response.read()

            started = time.time()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            elapsed = time.time() - started
        await self.collect(events * endpoints)
        return events * endpoints / elapsed

    async def baseline_latency(self, seconds: float, rate: float, endpoints: int) -> list[float]:
        limit = asyncio.Semaphore(CONCURRENCY)
        latencies: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:

            async def post(booking: str, endpoint: int, since: float) -> None:
                async with limit:
                    url = f"{self.receiver}/e{endpoint}"
                    async with session.post(url, data=self.body(booking), headers=JSON) as response:
                        await response.read()
                latencies.append((time.time() - since) * 1000)

            pending = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                (booking,) = self.ids(1)
                now = time.time()
                pending += [asyncio.create_task(post(booking, e, now)) for e in range(endpoints)]
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*pending)
        await self.collect(len(latencies))
        return latencies


def cpu_note(relay: CpuClock, postgres: CpuClock | None, receiver: CpuClock) -> str:
    pg = f"{postgres.percent():.0f} %" if postgres is not None else "n/a"
    return f"CPU: relay {relay.percent():.0f} %, PostgreSQL {pg}, receiver {receiver.percent():.0f} %"


async def _run(db_url: str, quick: bool) -> list[Row]:
    admin = await asyncpg.connect(db_url)
    name = f"relay_bench_{os.getpid()}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    from urllib.parse import urlsplit, urlunsplit

    url = urlunsplit(urlsplit(db_url)._replace(path="/" + name))
    conn = await asyncpg.connect(url)
    await conn.execute(BOOKING)
    await migrate(conn)
    await conn.close()

    receiver_port, relay_port = free_port(), free_port()
    receiver = f"http://127.0.0.1:{receiver_port}"
    relay_env = {
        "DATABASE_URL": url,
        "RELAY_EGRESS_ALLOW": "127.0.0.0/8",
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": str(relay_port),
        # The same sends in flight as the bare loop: the bench's endpoints are one merchant's
        # on one host, which the defaults (32 and 64, fairness between tenants) would cap.
        "RELAY_SENDS_PER_MERCHANT": str(CONCURRENCY),
        "RELAY_SENDS_PER_HOST": str(CONCURRENCY),
    }
    rows: list[Row] = []
    seconds = 4.0 if quick else 10.0
    pg_pid = await postgres_pid(url)
    try:
        with (
            node_receiver(receiver_port, record=True) as receiver_proc,
            process(
                [
                    sys.executable,
                    *os.environ.get("BENCH_RELAY_PYTHON_ARGS", "").split(),
                    "-m",
                    "relay",
                    "run",
                ],
                relay_env,
            ) as relay_proc,
        ):
            await wait_http(f"{receiver}/stats")
            await wait_http(f"http://127.0.0.1:{relay_port}/readyz")
            bench = Bench(url, receiver)
            for endpoints, burst in ((50, 40 if quick else 200), (500, 4 if quick else 20)):
                rate = LOAD / endpoints
                await bench.endpoints(endpoints)
                await bench.relay_throughput(2, endpoints)  # warm up connections
                clocks = (
                    CpuClock([relay_proc.pid]),
                    CpuClock([pg_pid], tree=True) if pg_pid is not None else None,
                    CpuClock([receiver_proc.pid]),
                )
                relay_rate = await bench.relay_throughput(burst, endpoints)
                cpu = cpu_note(*clocks)
                base_rate = await bench.baseline_throughput(burst, endpoints)
                rows.append(
                    row(
                        f"webhook deliveries/s, {endpoints} endpoints (baseline: bare aiohttp loop; {cpu})",
                        relay_rate,
                        base_rate,
                        ">= 0.5 of baseline",
                        "deliveries/s",
                    )
                )
                relay_lat = await bench.relay_latency(seconds, rate, endpoints)
                base_lat = await bench.baseline_latency(seconds, rate, endpoints)
                load = f"{int(rate * endpoints)} deliveries/s"
                for p, goal in ((50, ""), (99, "< 50 ms")):
                    rows.append(
                        row(
                            f"webhook commit->receiver p{p}, {endpoints} endpoints at {load}",
                            percentile(relay_lat, p),
                            percentile(base_lat, p),
                            goal,
                            "ms",
                        )
                    )
    finally:
        admin = await asyncpg.connect(db_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return rows


def run(quick: bool = False) -> list[Row]:
    with database_url() as db_url:
        return asyncio.run(_run(db_url, quick))


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
