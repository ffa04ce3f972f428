"""Outgoing HTTP clients side by side: the measurement that chose Relay's delivery engine.

Every client POSTs the same small JSON body from ``WORKERS`` concurrent workers to
``PATHS`` endpoint paths on one Node.js receiver (bench/node/receiver.js, answering
204), one client after the other in the same run. Each row gives POSTs/s, the
client process's CPU and the receiver's (100 % = one core): a receiver well under a
core is not what limits the figure.

Clients: httpx's AsyncClient; httpx on aiohttp's transport (httpx-aiohttp, if
installed); a bare aiohttp ClientSession; pyreqwest (Rust, if installed); and Relay's
own delivery session (``relay.egress.build_client``: aiohttp behind the SSRF guard).

``python -m bench.clients [--quick]``
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from bench.common import Row
from bench.receiver import CpuClock, free_port, node_receiver
from relay.egress import build_client

WORKERS = 100
PATHS = 500
BODY = (
    b'{"type":"booking_created","timestamp":"2026-01-01T00:00:00Z","data":{"id":"k1","merchantId":"bench"}}'
)
HEADERS = {"content-type": "application/json"}
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]

Post = Callable[[str], Awaitable[int]]


async def _drive(post: Post, base: str, total: int) -> float:
    """POSTs/s of ``total`` POSTs from ``WORKERS`` workers over ``PATHS`` paths."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            status = await post(f"{base}/e{i % PATHS}")
            if status != 204:
                raise RuntimeError(f"receiver answered {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return total / (time.perf_counter() - started)


async def _httpx(base: str, total: int) -> float:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits) as client:

        async def post(url: str) -> int:
            return (await client.post(url, content=BODY, headers=HEADERS)).status_code

        return await _drive(post, base, total)


async def _httpx_aiohttp(base: str, total: int) -> float:
    from httpx_aiohttp import HttpxAiohttpClient

    async with HttpxAiohttpClient() as client:

        async def post(url: str) -> int:
            return (await client.post(url, content=BODY, headers=HEADERS)).status_code

        return await _drive(post, base, total)


async def _aiohttp(base: str, total: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:

        async def post(url: str) -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status

        return await _drive(post, base, total)


async def _pyreqwest(base: str, total: int) -> float:
    from pyreqwest.client import ClientBuilder

    async with ClientBuilder().max_connections(512).build() as client:

        async def post(url: str) -> int:
            async with client.post(url).body_bytes(BODY).headers(HEADERS).build_streamed() as response:
                await response.bytes()
                return int(response.status)

        return await _drive(post, base, total)


async def _relay(base: str, total: int) -> float:
    async with build_client(LOOPBACK) as session:

        async def post(url: str) -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status

        return await _drive(post, base, total)


CLIENTS: dict[str, tuple[Callable[[str, int], Awaitable[float]], str | None]] = {
    "httpx AsyncClient": (_httpx, None),
    "httpx on aiohttp's transport (httpx-aiohttp)": (_httpx_aiohttp, "httpx_aiohttp"),
    "aiohttp ClientSession (bare)": (_aiohttp, None),
    "pyreqwest (Rust)": (_pyreqwest, "pyreqwest"),
    "Relay's delivery session (aiohttp + SSRF guard)": (_relay, None),
}


async def _run(quick: bool) -> list[Row]:
    total = 3000 if quick else 20000
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    rows: list[Row] = []
    with node_receiver(port) as receiver:
        results: dict[str, tuple[float, float, float]] = {}
        for name, (measure, needs) in CLIENTS.items():
            if needs is not None and importlib.util.find_spec(needs) is None:
                print(f"bench.clients: {needs} not installed, {name} skipped", file=sys.stderr)
                continue
            await measure(base, min(total, 500))  # warm up: connections open
            clock = CpuClock([receiver.pid])
            cpu = time.process_time()
            started = time.monotonic()
            rate = await measure(base, total)
            own = 100 * (time.process_time() - cpu) / (time.monotonic() - started)
            results[name] = (rate, own, clock.percent())
        bare = results["aiohttp ClientSession (bare)"][0]
        for name, (rate, own, theirs) in results.items():
            made: Row = {
                "metric": f"POSTs/s, {name}",
                "relay": rate,
                "baseline": bare,
                "ratio": rate / bare,
                "goal": f"client CPU {own:.0f} %, receiver CPU {theirs:.0f} %",
                "unit": "POSTs/s",
            }
            rows.append(made)
    return rows


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_run(quick))


def main(argv: list[str]) -> Any:
    from bench.report import markdown

    print(markdown(run(quick="--quick" in argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
