"""Live pages: commit -> client latency, fan-out rate and memory per idle connection.

Targets, each a separate server process on a private PostgreSQL:

* Relay ``/ws`` (``relay run``),
* Relay's Socket.IO endpoint (same process type, namespace ``/notifications``),
* the seed's own design rebuilt as the baseline: Node.js ``pg`` LISTEN + ``socket.io``
  gateway exactly as SEED-GUIDE.md (``bench/seed-node/server.js``).

One Node load generator (``bench/seed-node/loadgen.js``: ``ws`` for /ws, ``socket.io-client``
for both Socket.IO servers) runs in its own process; this process commits the bookings and
also LISTENs itself, which gives the bare-listener floor (commit -> NOTIFY received), the
baseline of the /ws latency rows. "Commit" is when the writer's autocommit INSERT returns.

* latency: 1,000 clients over 100 merchants (10 calendar pages each), 200 events/s spread
  over the merchants; p50/p99 of every (commit, delivery) pair.
* fan-out: one event to a room of 1,000 and of 5,000 clients; deliveries/s = clients /
  (last delivery - commit), median of 5.
* memory: server RSS after 5,000 idle connections minus RSS before, per connection.

The fan-out and memory rooms hold ``STAFF`` distinct users (each with many tabs), as a
large merchant would: Relay's presence tells every connection of a room when a user's
first connection opens, which for n distinct users in one room is n x connections
messages while they connect (5,000 distinct users: 12.5 million, and snapshots of up to
175 KB), traffic the seed's design does not send and that would swamp both rows.

``python -m bench.live [--quick]``; ``run(quick) -> rows``. Needs Node.js and npm (the bench
installs bench/seed-node/node_modules itself).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

from bench.common import percentile
from bench.common import row as _row
from relay.embedded import EmbeddedPostgres, free_port
from relay.store import migrate

NODE_DIR = Path(__file__).resolve().parent / "seed-node"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
Row = dict[str, Any]
NAN = float("nan")
_SEQUENCE = itertools.count(1)
DEFLATE = os.environ.get("BENCH_DEFLATE", "1") == "1"


# Distinct users in the fan-out and memory rooms (see the module's docstring).
STAFF = 50


@dataclass(frozen=True)
class Plan:
    latency_clients: int = 1000
    merchants: int = 100
    rate: float = 200.0
    seconds: float = 10.0
    fanout_sizes: tuple[int, ...] = (1000, 5000)
    repeats: int = 5

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            latency_clients=200, merchants=20, rate=100.0, seconds=3.0, fanout_sizes=(200, 1000), repeats=2
        )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def npm_install() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("bench/live needs Node.js and npm")
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)


def mint(merchant: str, user: str) -> str:
    claims = {"sub": user, "merchantId": merchant, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # "relay" or "seed"
    url: str
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid


@asynccontextmanager
async def serve(kind: str, dsn: str, *, argv: Sequence[str] | None = None) -> AsyncIterator[Server]:
    """A server process; ``argv`` replaces the relay's command line (same environment)."""
    port = free_port()
    env = dict(os.environ)
    if kind == "relay":
        env.update(
            DATABASE_URL=dsn, RELAY_JWT_SECRET=SECRET, RELAY_HTTP_HOST="127.0.0.1", RELAY_HTTP_PORT=str(port)
        )
        argv = argv or [sys.executable, "-m", "relay", "run"]
    else:
        env.update(DATABASE_URL=dsn, JWT_SECRET=SECRET, PORT=str(port))
        argv = ["node", str(NODE_DIR / "server.js")]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(kind, url)
        yield Server(kind, url, process)
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def wait_ready(kind: str, url: str) -> None:
    path = "/readyz" if kind == "relay" else "/socket.io/?EIO=4&transport=polling"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + path)).status_code == 200:
                    await asyncio.sleep(0.5 if kind == "relay" else 1.0)  # seed: its LISTEN follows listen()
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{kind} server at {url} did not become ready")


# --- load generator ------------------------------------------------------------------------


class LoadGen:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, line: str, wait: float = 60) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read(wait)

    async def read(self, wait: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), wait)
        if not raw:
            raise RuntimeError("load generator exited")
        answer: dict[str, Any] = json.loads(raw)
        return answer


@asynccontextmanager
async def clients(
    mode: str, url: str, merchants: Sequence[str], *, tag: bool = False, staff: int | None = None
) -> AsyncIterator[LoadGen]:
    """One connection per merchant entry, each its own user, or one of ``staff`` users;
    with ``tag`` each record carries the client's index."""
    tokens = [mint(m, f"u{i if staff is None else i % staff}") for i, m in enumerate(merchants)]
    config = {"mode": mode, "url": url, "tokens": tokens, "concurrency": 50, "deflate": DEFLATE, "tag": tag}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "loadgen.js"),
        f.name,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        limit=1 << 26,
    )
    gen = LoadGen(process)
    try:
        hello = await gen.read(wait=300)
        if hello["failed"]:
            raise RuntimeError(
                f"{hello['failed']} of {len(tokens)} {mode} clients failed to connect to {url}"
            )
        yield gen
    finally:
        os.unlink(f.name)
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- measurements --------------------------------------------------------------------------


class Writer:
    """Commits bookings and listens itself: commit times plus the bare-listener floor."""

    def __init__(self, conn: asyncpg.Connection, listener: asyncpg.Connection) -> None:
        self.conn = conn
        self.listener = listener
        self.committed: dict[str, float] = {}
        self.notified: dict[str, float] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str) -> AsyncIterator[Writer]:
        conn, listener = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        writer = cls(conn, listener)
        await listener.add_listener("booking_created", writer._on_notify)
        try:
            yield writer
        finally:
            await conn.close()
            await listener.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notified[json.loads(payload)["id"]] = time.time() * 1000

    async def commit(self, merchant: str, prefix: str) -> str:
        booking = f"{prefix}-{next(_SEQUENCE)}"
        await self.conn.execute(
            """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, $2, 'PENDING')""",
            booking,
            merchant,
        )
        self.committed[booking] = time.time() * 1000
        return booking


async def measure_latency(writer: Writer, gen: LoadGen, plan: Plan, per_merchant: int) -> dict[str, float]:
    start = time.monotonic()
    total = int(plan.rate * plan.seconds)
    ids = []
    for i in range(total):
        delay = start + i / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ids.append(await writer.commit(f"m{i % plan.merchants}", "lat"))
    expected = total * per_merchant
    deadline = time.monotonic() + 10
    while (await gen.ask("count"))["count"] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    records = (await gen.ask("dump"))["records"]
    latencies = [t - writer.committed[b] for b, t in records if b in writer.committed]
    floor = [writer.notified[b] - writer.committed[b] for b in ids if b in writer.notified]
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "delivered": len(latencies) / expected,
        "floor_p50": percentile(floor, 50),
        "floor_p99": percentile(floor, 99),
    }


async def measure_fanout(writer: Writer, gen: LoadGen, n: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        booking = await writer.commit("fan", "fan")
        deadline = time.monotonic() + 30
        while (await gen.ask("count"))["count"] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        records = [t for b, t in (await gen.ask("dump"))["records"] if b == booking]
        if len(records) < n:
            raise RuntimeError(f"fan-out: {len(records)} of {n} clients received the event")
        rates.append(n / ((max(records) - writer.committed[booking]) / 1000))
        await asyncio.sleep(0.5)
    return float(statistics.median(rates))


async def measure_target(kind: str, mode: str, dsn: str, plan: Plan) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with Writer.open(dsn) as writer:
        per_merchant = max(plan.latency_clients // plan.merchants, 1)
        merchants = [f"m{i % plan.merchants}" for i in range(plan.latency_clients)]
        async with serve(kind, dsn) as server, clients(mode, server.url, merchants) as gen:
            await asyncio.sleep(1)
            result["latency"] = await measure_latency(writer, gen, plan, per_merchant)
        for n in plan.fanout_sizes:
            async with serve(kind, dsn) as server:
                await asyncio.sleep(1)
                before = rss_kb(server.pid)
                async with clients(mode, server.url, ["fan"] * n, staff=STAFF) as gen:
                    await asyncio.sleep(2)
                    after = rss_kb(server.pid)
                    result[f"fanout_{n}"] = await measure_fanout(writer, gen, n, plan.repeats)
                result[f"memory_{n}"] = (after - before) / n
    return result


async def run_async(plan: Plan) -> list[Row]:
    raise_fd_limit()
    npm_install()
    pg = EmbeddedPostgres()
    try:
        await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.url)
        await conn.execute(BOOKING)
        await migrate(conn)
        await conn.close()
        ws = await measure_target("relay", "ws", pg.url, plan)
        sio = await measure_target("relay", "socketio", pg.url, plan)
        seed = await measure_target("seed", "socketio", pg.url, plan)
    finally:
        await asyncio.to_thread(pg.destroy)
    return rows(plan, ws, sio, seed)


def rows(plan: Plan, ws: dict[str, Any], sio: dict[str, Any], seed: dict[str, Any]) -> list[Row]:
    lat = f"{plan.latency_clients} clients, {plan.rate:g} events/s"
    floor_p50, floor_p99 = ws["latency"]["floor_p50"], ws["latency"]["floor_p99"]
    big = plan.fanout_sizes[-1]
    out: list[Row] = [
        _row(
            f"/ws commit->client p50 ms ({lat}; baseline: bare LISTEN)",
            ws["latency"]["p50"],
            floor_p50,
            "",
            "ms",
            difference=True,
        ),
        _row(
            f"/ws commit->client p99 ms ({lat}; baseline: bare LISTEN)",
            ws["latency"]["p99"],
            floor_p99,
            "difference <= 5 ms",
            "ms",
            difference=True,
        ),
    ]
    for n in plan.fanout_sizes:
        out.append(
            _row(f"/ws fan-out deliveries/s (1 event -> {n})", ws[f"fanout_{n}"], NAN, ">= 20,000", "/s")
        )
    out.append(_row(f"/ws memory per idle connection KB ({big})", ws[f"memory_{big}"], NAN, "<= 40", "KB"))
    out += [
        _row(
            f"Socket.IO commit->client p50 ms ({lat}; baseline: seed)",
            sio["latency"]["p50"],
            seed["latency"]["p50"],
            "",
            "ms",
        ),
        _row(
            f"Socket.IO commit->client p99 ms ({lat}; baseline: seed)",
            sio["latency"]["p99"],
            seed["latency"]["p99"],
            "ratio <= 1",
            "ms",
        ),
    ]
    for n in plan.fanout_sizes:
        out.append(
            _row(
                f"Socket.IO fan-out deliveries/s (1 event -> {n}; baseline: seed)",
                sio[f"fanout_{n}"],
                seed[f"fanout_{n}"],
                "ratio >= 1",
                "/s",
            )
        )
    out.append(
        _row(
            f"Socket.IO memory per idle connection KB ({big}; baseline: seed)",
            sio[f"memory_{big}"],
            seed[f"memory_{big}"],
            "",
            "KB",
        )
    )
    for name, result in (("/ws", ws), ("Socket.IO", sio), ("seed Socket.IO", seed)):
        share = result["latency"]["delivered"]
        if share < 1:
            out.append(_row(f"{name} share of latency-phase deliveries received", share, NAN, "1.0", ""))
    return out


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(run_async(Plan.quick() if quick else Plan()))


def main(argv: list[str]) -> int:
    results = run(quick="--quick" in argv)
    width = max(len(r["metric"]) for r in results)
    print(f"{'metric':{width}}  {'relay':>10}  {'baseline':>10}  {'ratio':>7}  goal")
    for r in results:
        relay, baseline, ratio = r["relay"], r["baseline"], r["ratio"]
        print(f"{r['metric']:{width}}  {relay:10.1f}  {baseline:10.1f}  {ratio:7.2f}  {r['goal']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
