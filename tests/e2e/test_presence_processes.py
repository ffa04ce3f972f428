"""Presence with real `relay run` processes: one is killed with SIGKILL, its users leave
for everyone within 15 s, and its restart leaves no ghost behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from relay.embedded import free_port
from tests.integration.livekit import SECRET, live_settings, token

LEFT_WITHIN = 15.0  # DESIGN.md: presence_left within 15 s of a relay process dying


class Relays:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[subprocess.Popen[str]] = []

    def start(self) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
        env.update(
            DATABASE_URL=self.dsn,
            RELAY_HTTP_HOST="127.0.0.1",
            RELAY_HTTP_PORT=str(port),
            RELAY_JWT_SECRET=SECRET,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "relay exited early"
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    return process, base
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "relay did not become ready"
            time.sleep(0.1)


@pytest.fixture
def relays(db_url: str) -> Iterator[Relays]:
    started = Relays(db_url)
    yield started
    for process in started.started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def until(
    ws: ClientConnection, wanted: dict[str, Any], seen: list[dict[str, Any]], wait: float
) -> None:
    """Read ``ws`` until ``wanted`` arrives (within ``wait`` seconds), keeping what came."""
    async with asyncio.timeout(wait):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if message == wanted:
                return


def test_a_killed_relays_users_leave_within_15_s_and_its_restart_leaves_no_ghost(
    db_url: str, relays: Relays
) -> None:
    settings = live_settings(db_url)
    _one, one_url = relays.start()
    two, two_url = relays.start()
    ws = {name: url.replace("http", "ws", 1) for name, url in (("one", one_url), ("two", two_url))}

    async def scenario() -> None:
        seen: list[dict[str, Any]] = []
        async with (
            connect(f"{ws['one']}/ws?token={token(settings, 'mA', user='ann')}") as ann,
            connect(f"{ws['two']}/ws?token={token(settings, 'mA', user='bob')}"),
            connect(f"{ws['two']}/ws?token={token(settings, 'mA', user='bob')}"),  # a second tab
            connect(f"{ws['two']}/ws?token={token(settings, 'mB', user='eve')}"),
        ):
            await until(ann, {"type": "presence_joined", "userId": "bob"}, seen, 10)
            two.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await until(ann, {"type": "presence_left", "userId": "bob"}, seen, LEFT_WITHIN)
            assert time.monotonic() - killed < LEFT_WITHIN
            assert not [m for m in seen if m.get("userId") == "eve"], seen  # another merchant's user

            _restarted, restarted_url = relays.start()
            again = restarted_url.replace("http", "ws", 1)
            async with connect(f"{again}/ws?token={token(settings, 'mA', user='bob')}"):
                await until(ann, {"type": "presence_joined", "userId": "bob"}, seen, 10)
                async with httpx.AsyncClient() as client:
                    headers = {"Authorization": f"Bearer {token(settings, 'mA', user='ann')}"}
                    answer = await client.get(f"{one_url}/presence", headers=headers)
                # bob's two connections on the killed process are gone: one connection now
                assert answer.json() == {
                    "online": [{"userId": "ann", "connections": 1}, {"userId": "bob", "connections": 1}]
                }

    asyncio.run(scenario())
