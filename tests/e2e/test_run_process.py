"""`relay run` as a real process: starts without a database, becomes ready, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import asyncpg
import httpx
import pytest

from relay.embedded import EmbeddedPostgres, free_port

Spawn = Callable[[str], tuple[subprocess.Popen[str], str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `relay run` against a DSN; returns the process and its base URL."""
    started: list[subprocess.Popen[str]] = []

    def go(dsn: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
        env.update(
            DATABASE_URL=dsn,
            RELAY_HTTP_HOST="127.0.0.1",
            RELAY_HTTP_PORT=str(port),
            RELAY_PROBE_INTERVAL="0.5",
            RELAY_RECONNECT_MAX_DELAY="1",
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield go
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def wait_for(url: str, status: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"relay exited early with {process.returncode}"
        try:
            last = httpx.get(url, timeout=5).status_code
            if last == status:
                return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s (last: {last!r})")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    return process.returncode, stderr


@pytest.mark.restarts_server
def test_run_starts_while_postgres_is_down_and_becomes_ready_when_it_comes_up(
    own_server: EmbeddedPostgres, spawn: Spawn
) -> None:
    own_server.stop()
    process, base = spawn(own_server.url_for("relay"))
    wait_for(f"{base}/healthz", 200, process)
    ready = httpx.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 503
    assert "listener not connected" in ready.json()["problems"]

    own_server.start()
    wait_for(f"{base}/readyz", 200, process)

    code, stderr = stop(process)
    assert code == 0, stderr


def test_run_stops_gracefully_on_sigterm(db_url: str, spawn: Spawn) -> None:
    process, base = spawn(db_url)
    wait_for(f"{base}/readyz", 200, process)

    async def insert() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) VALUES ('b1', 'm1', 'NEW')"""
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    deadline = time.monotonic() + 10
    while "relay_events_handed_on_total 1.0" not in httpx.get(f"{base}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the booking was not handed on"
        time.sleep(0.1)
    started = time.monotonic()
    code, stderr = stop(process)
    assert code == 0, stderr
    assert time.monotonic() - started < 8  # generous: the grace period is 5 s
    assert "relay stopping" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("database", ["refusing", "silent"])
def test_run_stops_on_sigterm_while_the_database_is_unreachable(database: str, spawn: Spawn) -> None:
    # "refusing": nothing listens on the port; "silent": a socket that accepts connections
    # and never answers, like a database host that went away mid-handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if database == "silent":
            silent.listen(64)
        port = silent.getsockname()[1]
        process, base = spawn(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        wait_for(f"{base}/healthz", 200, process)
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503
        started = time.monotonic()
        code, stderr = stop(process)
    assert code == 0, stderr
    assert time.monotonic() - started < 9  # generous: the grace period is 5 s
    assert "Traceback" not in stderr
