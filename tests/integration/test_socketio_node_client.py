"""The real `socket.io-client` from npm, used the way the seed's React hook uses it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.livekit import insert, live_settings, running, token
from tests.integration.sourcekit import TABLES, Table, event_ids, lifecycle, prepare

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed: the socket.io-client compatibility test needs them")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR / "seed_client.js"


class NodeClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.upgrades = 0  # transport upgrades (long-polling to websocket), counted apart

    async def next(self, wait: float = 10.0) -> tuple[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), wait)
            assert line, "the node client exited"
            message = json.loads(line)
            if message["event"] != "upgrade":
                return message["event"], message["data"]
            assert message["data"] == "websocket"
            self.upgrades += 1

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def until(self, event: str) -> Any:
        while True:
            name, data = await self.next()
            if name == event:
                return data
            assert name not in ("connect_error", "disconnect", "error"), (name, data)


async def start_client(script: Path, url: str, tok: str, transport: str) -> AsyncIterator[NodeClient]:
    process = await asyncio.create_subprocess_exec(
        "node", str(script), url, tok, transport, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield NodeClient(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_real_socketio_client_connects_gets_connected_and_receives_booking_created(
    db_url: str, node_client: Path, transport: str
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        url = f"http://127.0.0.1:{relay.http_port}"
        clients = start_client(node_client, url, token(settings, "mA", user="staff-1"), transport)
        async for client in clients:
            # then `connected`, as from the NestJS gateway
            assert await client.next() == ("connect", {"recovered": False})
            assert await client.next() == ("connected", {"userId": "staff-1", "merchantId": "mA"})
            await insert(db_url, ("other", "mB"), ("b1", "mA"))
            name, data = await client.next()
            assert name == "booking_created"
            assert data["id"] == "b1"
            assert data["merchantId"] == "mA"
            assert data["status"] == "PENDING"
            assert data["operation"] == "INSERT"
            break


async def test_real_socketio_client_with_a_bad_token_gets_connect_error(
    db_url: str, node_client: Path
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async for client in start_client(
            node_client, f"http://127.0.0.1:{relay.http_port}", "bad", "websocket"
        ):
            name, message = await client.next()
            assert name == "connect_error"
            assert "invalid token" in message
            break


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
async def test_real_socketio_client_receives_an_attached_sources_events_by_their_names(
    db_url: str, node_client: Path, table: Table
) -> None:
    await prepare(db_url, table)
    settings = live_settings(db_url)
    mine, theirs = table.merchants
    key = table.keys[0]
    async with running(settings) as relay:
        url = f"http://127.0.0.1:{relay.http_port}"
        async for client in start_client(node_client, url, token(settings, mine), "websocket"):
            async for other in start_client(node_client, url, token(settings, theirs), "websocket"):
                for each, merchant in ((client, mine), (other, theirs)):
                    assert await each.until("connected") == {"userId": "u1", "merchantId": merchant}
                await lifecycle(db_url, table, key, mine)
                ids = await event_ids(db_url, table.entity)
                assert [await client.next() for _ in ids] == [
                    (table.channel("created"), table.created(key, mine, ids[0])),
                    (table.channel("updated"), table.updated(key, mine, ids[1])),
                    (table.channel("deleted"), table.deleted(key, mine, ids[2])),
                ]
                with pytest.raises(TimeoutError):  # merchant B's client gets none of A's
                    await other.next(0.5)
                break
            break
