"""Poll and wal mode with two `relay run` processes: one leads (polls, or reads the replication
slot); SIGKILL it and the other leads within seconds."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from relay.store import Store
from relay.wal import switch
from tests.e2e.test_run_process import Spawn, spawn, wait_for

__all__ = ["spawn"]  # the fixture


async def gauge(client: httpx.AsyncClient, base: str, name: str) -> float:
    text = (await client.get(f"{base}/metrics", timeout=5)).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


async def test_when_the_polling_relay_is_sigkilled_the_other_polls_within_seconds(
    db_url: str, spawn: Spawn
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).set_capture("poll")
    finally:
        await conn.close()
    await takeover(db_url, spawn, "relay_poller_leader")


async def test_when_the_relay_reading_the_slot_is_sigkilled_the_other_reads_it_within_seconds(
    wal_db_url: str, spawn: Spawn
) -> None:
    conn = await asyncpg.connect(wal_db_url)
    try:
        await switch(Store(conn), Store(conn), "wal")
    finally:
        await conn.close()
    await takeover(wal_db_url, spawn, "relay_wal_leader")


async def takeover(db_url: str, spawn: Spawn, leader_gauge: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        relays = [spawn(db_url), spawn(db_url)]
        for process, base in relays:
            await asyncio.to_thread(wait_for, f"{base}/readyz", 200, process)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while True:
                leading = [await gauge(client, base, leader_gauge) for _, base in relays]
                if sorted(leading) == [0.0, 1.0] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert sorted(leading) == [0.0, 1.0]  # exactly one process polls
            leader, (survivor, base) = relays[leading.index(1.0)][0], relays[leading.index(0.0)]

            leader.kill()  # SIGKILL: its connection closes with it, and the session lock goes
            killed_at = time.monotonic()
            while await gauge(client, base, leader_gauge) != 1.0:
                assert time.monotonic() - killed_at < 5, "the other relay did not take over within 5 s"
                await asyncio.sleep(0.05)

            handed_on = await gauge(client, base, "relay_events_handed_on_total")
            await conn.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES ('b', 'm', 'N')""")
            deadline = time.monotonic() + 5  # the reconciliation pass is 30 s away: the leader did it
            while await gauge(client, base, "relay_events_handed_on_total") < handed_on + 1:
                assert time.monotonic() < deadline, "the event was not handed on after the takeover"
                await asyncio.sleep(0.05)
        assert survivor.poll() is None
    finally:
        await conn.close()
