"""`relay run` under hostile clients: its logs keep no token, and compressed messages
cannot inflate its memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.auth import mint_token
from relay.config import Settings
from relay.embedded import free_port

SECRET = "hostile-test-secret-0123456789abcdef0123456789"
MB = 1024 * 1024
# What one hostile connection may add to the relay's peak memory; the attacks below
# added 75 MB and more before messages were bounded before they were inflated.
MEMORY_BOUND = 30 * MB


class RelayProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def peak_memory(self) -> int:
        """The process's peak resident set size (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=15) == 0
        return self.log.read_text()


Start = Callable[..., RelayProcess]


@pytest.fixture
def start_relay(db_url: str, tmp_path: Path) -> Iterator[Start]:
    started: list[RelayProcess] = []

    def go(**env: str) -> RelayProcess:
        port = free_port()
        log = tmp_path / f"relay-{len(started)}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
        environ.update(
            DATABASE_URL=db_url,
            RELAY_HTTP_HOST="127.0.0.1",
            RELAY_HTTP_PORT=str(port),
            RELAY_JWT_SECRET=SECRET,
            **env,
        )
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the relay
            process = subprocess.Popen(
                [sys.executable, "-m", "relay", "run"], env=environ, stdout=out, stderr=subprocess.STDOUT
            )
        relay = RelayProcess(process, port, log)
        started.append(relay)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{relay.http}/readyz", timeout=5).status_code == 200:
                    return relay
            assert time.monotonic() < deadline, "relay run did not become ready"
            time.sleep(0.1)

    yield go
    for relay in started:
        if relay.process.poll() is None:
            relay.process.kill()
            relay.process.wait(timeout=10)


def token(merchant: str = "m1", user: str = "u1") -> str:
    return mint_token(Settings(jwt_secret=SECRET), merchant_id=merchant, user_id=user, ttl=300)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_reaches_the_logs(start_relay: Start, log_format: str) -> None:
    relay = start_relay(RELAY_LOG_FORMAT=log_format)
    good = token()
    head, payload, _signature = good.split(".")
    forged = f"{head}.{payload}.{'A' * 43}"
    secrets = [good, forged, good.split(".")[2]]

    async def visit() -> None:
        async with connect(f"{relay.ws}/ws?token={good}&since=0") as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
        async with connect(f"{relay.ws}/ws?token={forged}") as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4401
        # Socket.IO: a token in the query string and in the CONNECT packet (also a broken one)
        async with connect(f"{relay.ws}/socket.io/?EIO=4&transport=websocket&token={good}") as sio:
            assert str(await sio.recv()).startswith("0{")
            await sio.send("40/notifications," + json.dumps({"token": good}))
            assert str(await sio.recv()).startswith("40/notifications,{")
        async with connect(f"{relay.ws}/socket.io/?EIO=4&transport=websocket") as sio:
            await sio.recv()
            await sio.send("40/notifications," + json.dumps({"token": good})[:-1])  # not JSON
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await asyncio.wait_for(sio.recv(), 2)
        async with httpx.AsyncClient(base_url=relay.http) as client:
            await client.get(f"/socket.io/?EIO=4&transport=polling&token={good}")
            await client.get(f"/events?access_token={good}")

    asyncio.run(visit())
    log = relay.stop()
    for secret in secrets:
        assert secret not in log
    lines = log.splitlines()
    messages = [json.loads(line)["message"] for line in lines] if log_format == "json" else lines
    # uvicorn's line for the handshake is there, scrubbed
    assert any('"WebSocket /ws?token=[redacted]&since=0" [accepted]' in m for m in messages), log


async def flood(url: str, message: str, count: int) -> int | None:
    """Send ``count`` copies of ``message`` compressed; the close code the relay sent."""
    async with connect(url, compression="deflate", max_size=None, max_queue=None) as ws:
        await ws.recv()  # connected / the Engine.IO handshake
        with contextlib.suppress(ConnectionClosed):
            for _ in range(count):
                await ws.send(message)
            await asyncio.wait_for(ws.wait_closed(), 10)
        return ws.close_code


@pytest.mark.parametrize("endpoint", ["ws", "socketio"])
def test_compressed_messages_are_refused_before_they_are_inflated(start_relay: Start, endpoint: str) -> None:
    relay = start_relay()
    path = f"/ws?token={token()}" if endpoint == "ws" else "/socket.io/?EIO=4&transport=websocket"
    url = relay.ws + path
    before = relay.peak_memory()
    # 15 MB of one character is ~15 KB on the wire (over the limit before it is inflated);
    # 2 MB is ~2 KB (under it: the limit has to hold while inflating).
    for size in (15_000_000, 2_000_000):
        assert asyncio.run(flood(url, "4" + "a" * size, count=30)) == 1009
    assert relay.peak_memory() - before < MEMORY_BOUND
    relay.stop()


def test_a_burst_of_small_compressed_messages_is_inflated_only_as_fast_as_it_is_read(
    start_relay: Start,
) -> None:
    # Each message is within /ws's 4 KiB limit and ~20 bytes on the wire: one read of
    # 256 KiB holds thousands of them, which must not all be inflated at once.
    relay = start_relay()
    before = relay.peak_memory()

    async def burst() -> None:
        async with connect(
            f"{relay.ws}/ws?token={token()}", compression="deflate", max_queue=None, write_limit=2**24
        ) as ws:
            await ws.recv()
            for _ in range(20_000):
                await ws.send("a" * 4000)
            # the relay answers each (not JSON); the last answer means it read them all
            for _ in range(20_000):
                assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "error"

    asyncio.run(burst())
    assert relay.peak_memory() - before < MEMORY_BOUND
    relay.stop()
