"""Presence across relay processes sharing one database (DESIGN.md, "Presence")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from websockets.asyncio.client import ClientConnection, connect

from relay.app import Relay
from relay.config import Settings
from relay.embedded import free_port
from relay.live.presence import MAX_NOTICE, notices
from tests.integration.livekit import live_settings, nothing_more, recv, running, token, ws_url
from tests.integration.test_socketio_gateway import sio_client


@contextlib.asynccontextmanager
async def tab(
    relay: Relay, settings: Settings, merchant: str, user: str
) -> AsyncIterator[tuple[ClientConnection, list[dict[str, Any]]]]:
    """A /ws connection of ``user``, and the presence snapshot it got right after ``connected``."""
    async with connect(ws_url(relay, f"token={token(settings, merchant, user=user)}")) as ws:
        assert (await recv(ws))["type"] == "connected"
        snapshot = await recv(ws)
        assert snapshot["type"] == "presence", snapshot
        yield ws, snapshot["online"]


async def get_presence(relay: Relay, settings: Settings, merchant: str, user: str = "reader") -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
        answer = await client.get(
            "/presence", headers={"Authorization": f"Bearer {token(settings, merchant, user)}"}
        )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def until_presence(
    relay: Relay, settings: Settings, merchant: str, expected: list[dict[str, Any]]
) -> None:
    """Wait until ``relay`` reports ``expected`` (counts reach other processes in batches)."""
    async with asyncio.timeout(5):
        while (await get_presence(relay, settings, merchant))["online"] != expected:
            await asyncio.sleep(0.05)


def online(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"userId": user, "connections": n} for user, n in pairs]


async def test_users_on_two_relays_see_each_other_join_and_leave_once_per_user_not_per_tab(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        async with tab(one, settings, "mA", "ann") as (ann, first):
            assert first == online(("ann", 1))  # the connecting user included
            await until_presence(two, settings, "mA", first)
            async with tab(two, settings, "mA", "bob") as (bob, seen_by_bob):
                assert seen_by_bob == online(("ann", 1), ("bob", 1))
                assert await recv(ann) == {"type": "presence_joined", "userId": "bob"}
                await until_presence(two, settings, "mA", seen_by_bob)
                # Ann opens a second tab, on the other process: one user, two connections.
                async with tab(two, settings, "mA", "ann") as (ann2, seen_by_tab):
                    assert seen_by_tab == online(("ann", 2), ("bob", 1))
                    await until_presence(one, settings, "mA", online(("ann", 2), ("bob", 1)))
                    # Her first tab closes: she is still online (on the other process).
                    await ann.close()
                    await nothing_more(bob, 1.0)
                    await nothing_more(ann2, 0.3)
                    await until_presence(one, settings, "mA", online(("ann", 1), ("bob", 1)))
                # Her last tab closes: everyone left hears it once.
                assert await recv(bob) == {"type": "presence_left", "userId": "ann"}
                await nothing_more(bob, 0.5)
        await until_presence(two, settings, "mA", [])


async def test_presence_of_one_merchant_is_never_seen_by_another(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        async with tab(one, settings, "mB", "eve") as (eve, first):
            assert first == online(("eve", 1))
            await until_presence(two, settings, "mB", first)
            async with tab(two, settings, "mA", "ann") as (_ann, seen), tab(one, settings, "mA", "bob"):
                assert seen == online(("ann", 1))
                await until_presence(two, settings, "mA", online(("ann", 1), ("bob", 1)))
                await until_presence(one, settings, "mA", online(("ann", 1), ("bob", 1)))
                assert (await get_presence(two, settings, "mB"))["online"] == online(("eve", 1))
            await nothing_more(eve, 1.0)  # nothing of mA's joins and leaves


async def test_a_relay_that_stops_takes_its_users_away_at_once(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as one:
        async with tab(one, settings, "mA", "ann") as (ann, _):
            async with running(settings) as two, tab(two, settings, "mA", "bob"):
                assert await recv(ann) == {"type": "presence_joined", "userId": "bob"}
            # two stopped (its client was disconnected, or two could not say goodbye): bob leaves
            assert await recv(ann) == {"type": "presence_left", "userId": "bob"}


async def test_the_users_of_a_process_whose_lease_runs_out_leave(db_url: str) -> None:
    """A process that died without leaving (its lease, 3 s here, is never renewed)."""
    settings = live_settings(db_url)
    dead = uuid.uuid4()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO relay.presence_processes VALUES ($1, now() + interval '3 seconds', NULL)", dead
        )
        await conn.execute("INSERT INTO relay.presence VALUES ('mA', 'ghost', $1, 2)", dead)
        async with running(settings) as relay, tab(relay, settings, "mA", "ann") as (ann, first):
            assert first == online(("ann", 1), ("ghost", 2))
            assert await recv(ann, 15) == {"type": "presence_left", "userId": "ghost"}
            assert await conn.fetchval("SELECT count(*) FROM relay.presence WHERE process_id = $1", dead) == 0
    finally:
        await conn.close()


async def test_a_process_restarting_in_the_slot_of_a_killed_one_removes_its_ghosts_at_once(
    db_url: str,
) -> None:
    """The killed process's lease (a minute here) is not waited for: a process serving on
    the same host and port removes its counts when it starts."""
    port = free_port()
    settings = live_settings(db_url, http_port=port)
    killed, elsewhere = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(db_url)
    try:
        for process, slot in ((killed, f"{socket.gethostname()}:{port}"), (elsewhere, "other-host:8080")):
            await conn.execute(
                "INSERT INTO relay.presence_processes VALUES ($1, now() + interval '1 minute', $2)",
                process,
                slot,
            )
        await conn.execute("INSERT INTO relay.presence VALUES ('mA', 'ghost', $1, 1)", killed)
        await conn.execute("INSERT INTO relay.presence VALUES ('mA', 'bob', $1, 1)", elsewhere)
        async with running(settings) as relay, tab(relay, settings, "mA", "ann") as (_ann, first):
            assert first == online(("ann", 1), ("bob", 1))
            assert (await get_presence(relay, settings, "mA"))["online"] == online(("ann", 1), ("bob", 1))
    finally:
        await conn.close()


async def test_a_process_whose_lease_was_taken_away_registers_again_with_its_users(db_url: str) -> None:
    """A process that stalled past its lease had its counts removed by another: it writes
    them again on its next heartbeat, so its users come back for everyone."""
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        async with tab(one, settings, "mA", "ann") as (ann, _), tab(two, settings, "mA", "bob"):
            assert await recv(ann) == {"type": "presence_joined", "userId": "bob"}
            conn = await asyncpg.connect(db_url)
            try:
                await conn.execute(
                    "UPDATE relay.presence_processes SET lease_until = now() - interval '1 second'"
                    " WHERE process_id = $1",
                    two.presence.process_id,
                )
            finally:
                await conn.close()
            assert await recv(ann, 10) == {"type": "presence_left", "userId": "bob"}
            assert await recv(ann, 10) == {"type": "presence_joined", "userId": "bob"}


async def test_socketio_clients_get_presence_events_without_type(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        async with sio_client(one, token(settings, "mA", user="ann"), transports=["websocket"]) as ann:
            assert await ann.next() == ("connected", {"userId": "ann", "merchantId": "mA"})
            assert await ann.next_presence() == ("presence", {"online": online(("ann", 1))})
            await until_presence(two, settings, "mA", online(("ann", 1)))
            async with sio_client(two, token(settings, "mA", user="bob"), transports=["polling"]) as bob:
                assert await bob.next_presence() == ("presence", {"online": online(("ann", 1), ("bob", 1))})
                assert await ann.next_presence() == ("presence_joined", {"userId": "bob"})
                await until_presence(one, settings, "mA", online(("ann", 1), ("bob", 1)))
                async with tab(one, settings, "mA", "cid") as (_cid, seen):
                    assert seen == online(("ann", 1), ("bob", 1), ("cid", 1))  # /ws and Socket.IO alike
                    assert await bob.next_presence() == ("presence_joined", {"userId": "cid"})
                assert await bob.next_presence() == ("presence_left", {"userId": "cid"})
            assert await ann.next_presence() == ("presence_joined", {"userId": "cid"})
            assert await ann.next_presence() == ("presence_left", {"userId": "cid"})
            assert await ann.next_presence() == ("presence_left", {"userId": "bob"})


async def test_a_burst_of_connections_is_written_and_read_in_a_few_batches(db_url: str) -> None:
    """300 clients of 300 merchants (long ids: the notifications must be split) connect at
    once; the presence statements run per batch, not per connection."""
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        calls = {"flush": 0, "counts": 0}
        for relay in (one, two):
            store = relay.presence._store
            for name in calls:
                method = getattr(store, f"presence_{name}")

                async def counted(*args: Any, _method: Any = method, _name: str = name) -> Any:
                    calls[_name] += 1
                    return await _method(*args)

                setattr(store, f"presence_{name}", counted)
        merchants = [f"merchant-{i:03d}-" + "x" * 50 for i in range(300)]
        async with contextlib.AsyncExitStack() as stack:
            clients = await asyncio.gather(
                *(stack.enter_async_context(tab(one, settings, m, "u")) for m in merchants)
            )
            assert all(seen == online(("u", 1)) for _ws, seen in clients)
            await until_presence(two, settings, merchants[0], online(("u", 1)))
            await until_presence(two, settings, merchants[-1], online(("u", 1)))
            # a client of each merchant on the other process sees the first one
            async with tab(two, settings, merchants[0], "v") as (_v, seen):
                assert seen == online(("u", 1), ("v", 1))
            async with tab(two, settings, merchants[-1], "v") as (_v, seen):
                assert seen == online(("u", 1), ("v", 1))
        assert calls["flush"] + calls["counts"] < 60, calls


def test_notifications_are_split_under_the_payload_limit_and_name_every_merchant() -> None:
    merchants = {f"m{i}-" + "y" * 60 for i in range(500)}
    payloads = notices("me", merchants)
    assert len(payloads) > 1
    assert all(len(p.encode()) < MAX_NOTICE for p in payloads)
    named = [m for p in payloads for m in json.loads(p)["merchants"]]
    assert sorted(named) == sorted(merchants)
    assert notices("me", ["z" * 9000]) == [json.dumps({"from": "me", "all": True})]
