"""Capture modes with relays running: poll mode end to end, switches followed without a restart,
one poller at a time with a takeover, and the feed's safety nets when nobody polls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx

from relay.check import check
from relay.store import Store
from tests.integration.livekit import insert, live_settings, nothing_more, recv, running, token, ws_client
from tests.integration.test_sources import listen, nothing

POLLER_LOCK = "SELECT pg_advisory_lock(hashtext('relay.poller'))"
POLLER_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'relay-poller'"


async def set_mode(db_url: str, mode: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await Store(conn).set_capture(mode)
    finally:
        await conn.close()


async def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def connection(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


def metric_lines(text: str, prefix: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def test_in_poll_mode_events_reach_ws_and_metrics_show_the_mode_and_the_poller(db_url: str) -> None:
    await set_mode(db_url, "poll")
    settings = live_settings(db_url)
    async with running(settings) as relay:
        await asyncio.wait_for(relay.poller.leading.wait(), 10)
        async with ws_client(relay, token(settings, "mA")) as ws:
            await insert(db_url, ("b1", "mA"), ("b2", "mB"), ("b3", "mA"))
            assert [(await recv(ws))["data"]["id"] for _ in range(2)] == ["b1", "b3"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            text = (await client.get("/metrics")).text
    assert metric_lines(text, "relay_capture_mode") == {
        'relay_capture_mode{mode="notify"}': 0.0,
        'relay_capture_mode{mode="poll"}': 1.0,
        'relay_capture_mode{mode="wal"}': 0.0,
    }
    assert metric_lines(text, "relay_poller_leader") == {"relay_poller_leader": 1.0}
    counts = metric_lines(text, "relay_poll_seconds_count")
    assert counts['relay_poll_seconds_count{result="sequenced"}'] >= 1
    assert counts['relay_poll_seconds_count{result="empty"}'] >= 1
    assert metric_lines(text, "relay_poll_events_total")["relay_poll_events_total"] >= 3


async def test_a_running_relay_follows_each_switch_and_an_open_session_stops_notifying(db_url: str) -> None:
    settings = live_settings(db_url)  # reconciliation every 30 s: it delivers nothing here
    insert_sql = """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'mA', 'PENDING')"""
    async with (
        connection(db_url) as writer,
        connection(db_url) as observer,
        running(settings) as relay,
        ws_client(relay, token(settings, "mA")) as ws,
    ):
        notified = await listen(observer, "booking_created")
        await writer.execute(insert_sql, "before")
        assert (await recv(ws))["data"]["id"] == "before"
        assert (await asyncio.wait_for(notified.get(), 5))[1]["id"] == "before"

        await set_mode(db_url, "poll")
        await asyncio.wait_for(relay.poller.leading.wait(), 5)
        await writer.execute(insert_sql, "during")  # the same session, opened before the switch
        assert (await recv(ws))["data"]["id"] == "during"
        await nothing(notified, 0.5)

        await set_mode(db_url, "notify")
        await eventually(lambda: not relay.poller.leading.is_set(), 5)
        assert await observer.fetchval(POLLER_BACKENDS) == 0  # notify mode holds no poller session
        await writer.execute(insert_sql, "after")
        assert (await recv(ws))["data"]["id"] == "after"
        assert (await asyncio.wait_for(notified.get(), 5))[1]["id"] == "after"


async def test_two_relays_in_poll_mode_one_polls_and_the_other_takes_over_when_it_stops(db_url: str) -> None:
    await set_mode(db_url, "poll")
    settings = live_settings(db_url)
    tok = token(settings, "mA")
    async with contextlib.AsyncExitStack() as first, connection(db_url) as observer:
        one = await first.enter_async_context(running(settings))
        await asyncio.wait_for(one.poller.leading.wait(), 10)
        async with running(settings) as two, ws_client(two, tok) as ws:
            await asyncio.sleep(two.poller.lock_retry * 2)  # two has tried for the lock, twice
            assert not two.poller.leading.is_set()
            assert await Store(observer).leader_backend("relay.poller") == one.poller.backend_pid
            assert await observer.fetchval(POLLER_BACKENDS) == 2  # one polling, one waiting
            await insert(db_url, ("b1", "mA"))
            assert (await recv(ws))["data"]["id"] == "b1"  # two's feed, woken by one's poller

            await first.aclose()  # one stops: its session, and the lock, end
            await asyncio.wait_for(two.poller.leading.wait(), two.poller.lock_retry + 5)
            assert await Store(observer).leader_backend("relay.poller") == two.poller.backend_pid
            await insert(db_url, ("b2", "mA"))
            assert (await recv(ws))["data"]["id"] == "b2"


async def test_while_no_poller_runs_wake_ups_only_read_and_a_waiting_reader_still_sees_its_write(
    db_url: str,
) -> None:
    await set_mode(db_url, "poll")
    settings = live_settings(db_url)
    tok = token(settings, "mA")
    async with connection(db_url) as holder:
        await holder.execute(POLLER_LOCK)  # no relay can poll
        async with running(settings) as relay, ws_client(relay, tok) as ws:
            await insert(db_url, ("b1", "mA"))
            relay.feed.wake()
            await nothing_more(ws, 1.0)  # the feed's wake-ups do not sequence in poll mode
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
                page = await client.get("/events", headers={"Authorization": f"Bearer {tok}"})
            assert [e["data"]["id"] for e in page.json()["events"]] == ["b1"]  # its pass sequenced
            assert (await recv(ws))["data"]["id"] == "b1"

            await insert(db_url, ("b2", "mA"))
            await nothing_more(ws, 1.0)
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await asyncio.wait_for(relay.poller.leading.wait(), relay.poller.lock_retry + 5)
            assert (await recv(ws))["data"]["id"] == "b2"


async def test_the_reconciliation_pass_sequences_while_no_poller_runs(db_url: str) -> None:
    await set_mode(db_url, "poll")
    settings = live_settings(db_url, reconcile_interval=0.5)
    async with connection(db_url) as holder:
        await holder.execute(POLLER_LOCK)
        async with running(settings) as relay, ws_client(relay, token(settings, "mA")) as ws:
            await insert(db_url, ("b1", "mA"))
            assert (await recv(ws, 10))["data"]["id"] == "b1"
            assert not relay.poller.leading.is_set()


async def test_check_reports_the_mode_and_whether_a_relay_polls(db_url: str) -> None:
    settings = live_settings(db_url)
    assert ("ok", "capture mode: notify") in await check(settings)
    await set_mode(db_url, "poll")
    lines = await check(settings)
    assert (
        "warn",
        "capture mode: poll, but no relay process polls for events now (none running?): "
        "events wait for a reconciliation pass",
    ) in lines
    async with running(settings) as relay:
        await asyncio.wait_for(relay.poller.leading.wait(), 10)
        lines = await check(settings)
        pid = relay.poller.backend_pid
    assert ("ok", f"capture mode: poll (a relay process polls, backend pid {pid})") in lines
    assert not [line for line in lines if line[0] == "fail"], json.dumps(lines)
