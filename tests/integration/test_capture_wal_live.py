"""Capture mode wal with relays running: switches under writers lose and duplicate nothing,
one relay process at a time reads the slot and another takes over, /metrics and `relay
check` show the slot."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from relay.check import check
from tests.integration.livekit import live_settings, running
from tests.integration.test_capture_live import eventually, metric_lines
from tests.integration.test_capture_wal import connected, switch_to

INSERT = """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'mA', 'PENDING')"""
CREATED = "SELECT payload->>'id' AS id FROM relay.events WHERE channel = 'booking_created'"


async def write(url: str, name: str, stop: asyncio.Event, written: list[str]) -> None:
    """Insert bookings, one transaction each, until told to stop."""
    async with connected(url) as conn:
        for i in itertools.count():
            if stop.is_set():
                return
            await conn.execute(INSERT, f"{name}-{i}")
            written.append(f"{name}-{i}")
            await asyncio.sleep(0.002)


async def test_switching_notify_wal_poll_notify_under_writers_loses_and_duplicates_nothing(
    wal_db_url: str,
) -> None:
    settings = live_settings(wal_db_url, reconcile_interval=1.0)
    stop, written = asyncio.Event(), []
    async with running(settings) as relay:
        writers = [asyncio.create_task(write(wal_db_url, f"w{n}", stop, written)) for n in range(4)]
        try:
            await asyncio.sleep(0.5)
            for mode in ("wal", "poll", "notify"):
                await switch_to(wal_db_url, mode)
                await asyncio.sleep(1.0)
                if mode == "wal":
                    assert relay.wal.leading.is_set()
        finally:
            stop.set()
            await asyncio.gather(*writers)
        async with connected(wal_db_url) as conn:
            deadline = time.monotonic() + 15
            while len(await conn.fetch(CREATED + " AND position IS NOT NULL")) < len(written):
                assert time.monotonic() < deadline, "not every write became an event"
                await asyncio.sleep(0.1)
            recorded = [r["id"] for r in await conn.fetch(CREATED)]
            by_mode = await conn.fetchval("SELECT count(*) FROM relay.events WHERE wal_lsn IS NOT NULL")
    assert sorted(recorded) == sorted(written)  # none lost, none twice
    assert by_mode > 0  # and the slot did capture some of them


async def test_one_relay_reads_the_slot_and_another_takes_over_when_its_connection_dies(
    wal_db_url: str,
) -> None:
    await switch_to(wal_db_url, "wal")
    settings = live_settings(wal_db_url)
    async with running(settings) as one, running(settings) as two, connected(wal_db_url) as conn:
        await eventually(lambda: one.wal.leading.is_set() or two.wal.leading.is_set())
        await asyncio.sleep(0.3)
        assert [one.wal.leading.is_set(), two.wal.leading.is_set()].count(True) == 1
        leader = one if one.wal.leading.is_set() else two
        await conn.execute("SELECT pg_terminate_backend($1)", leader.wal.backend_pid)
        await eventually(lambda: one.wal.leading.is_set() or two.wal.leading.is_set(), timeout=5)
        await conn.execute(INSERT, "after")
        deadline = time.monotonic() + 5
        while await conn.fetchval(CREATED + " AND position IS NOT NULL AND payload->>'id' = 'after'") is None:
            assert time.monotonic() < deadline, "the change was not recorded after the takeover"
            await asyncio.sleep(0.05)
        assert [one.wal.leading.is_set(), two.wal.leading.is_set()].count(True) == 1


async def test_metrics_and_check_show_the_slot_while_a_relay_reads_it(wal_db_url: str) -> None:
    await switch_to(wal_db_url, "wal")
    settings = live_settings(wal_db_url)
    async with running(settings) as relay:
        await eventually(relay.wal.leading.is_set)
        async with connected(wal_db_url) as conn:
            await conn.execute(INSERT, "m1")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            text = ""
            for _ in range(100):
                text = (await client.get("/metrics")).text
                if metric_lines(text, "relay_wal_events_total").get("relay_wal_events_total", 0) >= 1:
                    break
                await asyncio.sleep(0.05)
        lines = [line for line in await check(settings) if line[1].startswith("capture mode")]
        pid = relay.wal.backend_pid
    assert metric_lines(text, 'relay_capture_mode{mode="wal"}') == {'relay_capture_mode{mode="wal"}': 1.0}
    assert metric_lines(text, "relay_wal_leader") == {"relay_wal_leader": 1.0}
    assert metric_lines(text, "relay_wal_slot_lost") == {"relay_wal_slot_lost": 0.0}
    assert set(metric_lines(text, "relay_wal_slot_")) >= {
        "relay_wal_slot_lag_bytes",
        "relay_wal_slot_retained_bytes",
    }
    assert metric_lines(text, "relay_wal_slot_lag_bytes")["relay_wal_slot_lag_bytes"] >= 0
    assert lines[0][0] == "ok" and lines[0][1].startswith(
        f"capture mode: wal (a relay process reads the slot, backend pid {pid}); the slot retains "
    )


async def test_a_booking_reaches_a_live_page_in_wal_mode(wal_db_url: str) -> None:
    from tests.integration.livekit import recv, token, ws_client

    await switch_to(wal_db_url, "wal")
    settings = live_settings(wal_db_url)
    async with running(settings) as relay:
        await eventually(relay.wal.leading.is_set)
        async with ws_client(relay, token(settings, "mA")) as ws, connected(wal_db_url) as conn:
            await conn.execute(INSERT, "live")
            message = await recv(ws)
    assert message["channel"] == "booking_created" and message["data"]["id"] == "live"
