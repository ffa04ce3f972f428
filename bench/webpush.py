"""Web Push throughput from one process: real encryption and VAPID, a local push service.

The push service runs in a child process (so its CPU is not ours) and answers 201 to
every POST. We measure

* deliveries/s end to end in one relay process (``app.start``: trigger, dispatcher,
  push channel with its database lookups) for a burst of bookings committed at once,
  50 subscriptions each; the database is ``BENCH_DATABASE_URL`` or an embedded server;
* sends/s through ``WebPushSender`` (render, aes128gcm encryption with pywebpush,
  cached VAPID header, POST with the shared aiohttp session) at a fixed concurrency;
* the cost split (encrypt / sign / HTTP) from sequential sends, where the HTTP time is
  not inflated by other sends' encryption on the same event loop;
* a bare loop of ``WebPusher.encode`` in the same run: the CPU floor of a send;
* a bare loop of encrypt + POST (``WebPusher.encode``, the cached VAPID header, a plain
  ``aiohttp.ClientSession``) on the same push service with ``E2E_IN_FLIGHT`` sends in
  flight, what one merchant's burst gets through the dispatcher: the baseline of the end
  to end row, which gives the CPU of the relay (this process) and of PostgreSQL beside it;
* one uncached VAPID signature (paid once per push-service origin every ~11 h).

``python -m bench.webpush [--sends N] [--concurrency C] [--connections K]``

Sends go through ``relay.egress.build_client`` (the SSRF-guarded session Relay uses).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

from bench.common import database_url
from bench.common import row as _row
from bench.receiver import CpuClock
from bench.webhooks import postgres_pid
from relay import app
from relay.config import Settings
from relay.egress import build_client
from relay.push.notification import render
from relay.push.sender import Subscription, WebPushSender, outcome_for
from relay.push.vapid import VapidSigner, b64url_encode, generate_key_pair, public_key_bytes
from relay.store import migrate

GOAL = 800.0
BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
SUBSCRIPTIONS = 50
# A burst long enough that the first claim and the last record (and this bench's 50 ms
# polling) are not what is measured: 600 deliveries last a quarter of a second.
E2E_MIN_DELIVERIES = 3000
E2E_IN_FLIGHT = 32  # the dispatcher's default sends in flight per merchant (sends_per_merchant)
DATA = {"id": "clx9bench0001", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": 1}


class _PushService(asyncio.Protocol):
    """HTTP/1.1 keep-alive: read each request's headers and Content-Length body, answer 201."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nLocation: /m/1\r\n\r\n")


def _serve(conn: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_PushService, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        server.close()

    asyncio.run(main())


def _subscriptions(origin: str) -> list[Subscription]:
    subs = []
    for i in range(SUBSCRIPTIONS):
        key = ec.generate_private_key(ec.SECP256R1())
        p256dh = b64url_encode(public_key_bytes(key))
        subs.append(Subscription(i, f"{origin}/push/{i}", p256dh, b64url_encode(bytes(16))))
    return subs


async def _measure(port: int, sends: int, concurrency: int, connections: int) -> dict[str, Any]:
    origin = f"http://127.0.0.1:{port}"
    subs = _subscriptions(origin)
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:bench@example.com")
    # The client Relay uses (SSRF-guarded), with loopback allowed for the local service.
    allow = [ipaddress.ip_network("127.0.0.0/8")]
    async with build_client(allow, timeout=10, max_connections=connections) as client:
        sender = WebPushSender(signer, client)
        # Warm up connections and the VAPID cache.
        await asyncio.gather(*(sender.send(subs[i % len(subs)], "booking_created", DATA) for i in range(50)))

        # Cost split: sequential sends, each part of a send timed on its own.
        split = await _cost_split(sender, subs, min(sends, 400))

        # Throughput: ``concurrency`` sends in flight.
        queue = iter(range(sends))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for i in queue:
                if (await sender.send(subs[i % len(subs)], "booking_created", DATA)).kind != "success":
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rate": sends / elapsed, "split": split, "failures": failures}


async def _cost_split(sender: WebPushSender, subs: list[Subscription], sends: int) -> dict[str, float]:
    """Milliseconds per send spent encrypting, signing (VAPID, mostly cached) and in HTTP."""
    spent = {"encrypt": 0.0, "sign": 0.0, "http": 0.0}
    for i in range(sends):
        sub = subs[i % len(subs)]
        started = time.perf_counter()
        sender.encrypt(sub, "booking_created", DATA)
        encrypted = time.perf_counter()
        sender.signer.header_for(sub.endpoint)
        signed = time.perf_counter()
        request = sender.prepare(sub, "booking_created", DATA)
        prepared = time.perf_counter()
        async with sender.client.post(request.url, data=request.body, headers=request.headers) as response:
            await response.read()
        spent["encrypt"] += encrypted - started
        spent["sign"] += signed - encrypted
        spent["http"] += time.perf_counter() - prepared
        assert outcome_for(response.status, response.headers).kind == "success", response.status
    return {part: 1000 * seconds / max(sends, 1) for part, seconds in spent.items()}


async def _bare_loop(port: int, sends: int, concurrency: int) -> float:
    """Encrypt + POST/s with no database, queue or dispatcher: ``WebPusher.encode`` of the
    rendered notification, the cached VAPID header, a plain aiohttp session."""
    subs = _subscriptions(f"http://127.0.0.1:{port}")
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:bench@example.com")
    queue = iter(range(sends + concurrency))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(timed: bool) -> None:
            for i in queue:
                sub = subs[i % len(subs)]
                plaintext = render("booking_created", DATA)
                body = WebPusher(sub.info).encode(plaintext, content_encoding="aes128gcm")["body"]
                headers = {
                    "Authorization": signer.header_for(sub.endpoint),
                    "TTL": "86400",
                    "Content-Encoding": "aes128gcm",
                    "Content-Type": "application/octet-stream",
                }
                async with session.post(sub.endpoint, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 201, response.status
                if not timed:
                    return

        await asyncio.gather(*(worker(False) for _ in range(concurrency)))  # connections, VAPID cache
        started = time.perf_counter()
        await asyncio.gather(*(worker(True) for _ in range(concurrency)))
        return sends / (time.perf_counter() - started)


def _encode_floor(sends: int) -> float:
    """Bare ``WebPusher.encode`` per second: the CPU floor of a send."""
    key = ec.generate_private_key(ec.SECP256R1())
    info = {
        "endpoint": "https://push.example.com/x",
        "keys": {"p256dh": b64url_encode(public_key_bytes(key)), "auth": b64url_encode(bytes(16))},
    }
    plaintext = render("booking_created", DATA)
    started = time.perf_counter()
    for _ in range(sends):
        WebPusher(info).encode(plaintext, content_encoding="aes128gcm")
    return sends / (time.perf_counter() - started)


def _sign_ms(rounds: int = 200) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = VapidSigner(key, "mailto:bench@example.com", refresh_before=0)
    started = time.perf_counter()
    for i in range(rounds):
        signer.header_for(f"https://push{i}.example.com/x")  # a new origin: never cached
    return 1000 * (time.perf_counter() - started) / rounds


async def _scratch(admin_url: str) -> str:
    name = f"relay_bench_push_{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(BOOKING)
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def _measure_e2e(admin_url: str, port: int, sends: int) -> tuple[float, str]:
    """Deliveries/s through ``app.start`` (dispatcher + push channel): a burst of bookings
    committed at once, until every delivery is recorded as succeeded; and the CPU spent."""
    url = await _scratch(admin_url)
    pg_pid = await postgres_pid(url)
    private, _ = generate_key_pair()
    settings = Settings.model_validate(
        {
            "database_url": url,
            "vapid_private_key": private,
            "vapid_subject": "mailto:bench@example.com",
            "egress_allow": "127.0.0.0/8",
            "http_host": "127.0.0.1",
            "http_port": 0,
        }
    )
    origin = f"http://127.0.0.1:{port}"
    bookings = max(sends // SUBSCRIPTIONS, 1)
    async with app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        async with relay.pool.acquire() as conn:
            await conn.executemany(
                """INSERT INTO relay.push_subscriptions (merchant_id, user_id, endpoint, p256dh, auth)
                   VALUES ('m1', 'u1', $1, $2, $3)""",
                [(s.endpoint, s.p256dh, s.auth) for s in _subscriptions(origin)],
            )
            clocks = (CpuClock([os.getpid()]), CpuClock([pg_pid], tree=True) if pg_pid else None)
            started = time.perf_counter()
            async with conn.transaction():
                await conn.executemany(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""",
                    [(f"b{i}",) for i in range(bookings)],
                )
            expected = bookings * SUBSCRIPTIONS
            while (
                await conn.fetchval("SELECT count(*) FROM relay.deliveries WHERE state = 'succeeded'")
                < expected
            ):
                if time.perf_counter() - started > 120:
                    raise RuntimeError("push deliveries did not finish within 120 s")
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            relay_cpu, pg_clock = clocks[0].percent(), clocks[1]
            pg_cpu = f"{pg_clock.percent():.0f} %" if pg_clock is not None else "n/a"
    return expected / elapsed, f"CPU: relay {relay_cpu:.0f} %, PostgreSQL {pg_cpu}"


def run(
    quick: bool = False, sends: int | None = None, concurrency: int = 8, connections: int = 8
) -> list[dict[str, Any]]:
    """Rows ``{"metric","relay","baseline","ratio","goal","unit"}`` for ``python -m bench``."""
    if sends is None:
        sends = 600 if quick else 3000
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    service = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    service.start()
    try:
        port = ours.recv()
        floor = _encode_floor(sends)
        result = asyncio.run(_measure(port, sends, concurrency, connections))
        bare = asyncio.run(_bare_loop(port, max(sends, E2E_MIN_DELIVERIES), E2E_IN_FLIGHT))
        with database_url() as admin_url:
            e2e, cpu = asyncio.run(_measure_e2e(admin_url, port, max(sends, E2E_MIN_DELIVERIES)))
    finally:
        ours.send("stop")
        service.join(5)
        if service.is_alive():
            service.kill()
    rate = result["rate"]
    split = result["split"]
    floor_ms = 1000 / floor
    total_ms = sum(split.values())
    sign_ms = _sign_ms()
    per_s = f">= {GOAL:.0f}/s"
    rows = [
        _row(
            f"push sends/s, 1 process, {concurrency} in flight, {connections} connections "
            "(baseline: bare WebPusher.encode/s)",
            round(rate),
            round(floor),
            per_s,
            "sends/s",
        ),
        _row(
            "push deliveries/s end to end: commit -> dispatcher -> push service "
            f"(baseline: bare loop of encrypt + aiohttp POST, {E2E_IN_FLIGHT} in flight; {cpu})",
            round(e2e),
            round(bare),
            ">= 0.5 of baseline",
            "deliveries/s",
        ),
        _row("push encrypt ms/send (baseline: bare encode)", split["encrypt"], floor_ms, "", "ms"),
        _row(
            "push sign ms/send, cached VAPID (baseline: one uncached signature)",
            split["sign"],
            sign_ms,
            "cached",
            "ms",
        ),
        _row("push HTTP ms/send, sequential (baseline: whole send)", split["http"], total_ms, "", "ms"),
    ]
    if result["failures"]:
        rows.append(_row("push sends failed", result["failures"], 0, "0", "sends"))
    return rows


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=8, help="sends in flight")
    parser.add_argument("--connections", type=int, default=8, help="connection pool size")
    args = parser.parse_args()
    for row in run(args.quick, args.sends, args.concurrency, args.connections):
        print(
            f"{row['metric']:<95} relay={row['relay']!s:>9} baseline={row['baseline']!s:>9} "
            f"ratio={row['ratio']!s:>6} goal={row['goal']}"
        )


if __name__ == "__main__":
    main()
