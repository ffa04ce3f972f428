"""Crashes and several relay processes: at least once, and exactly once without a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from starlette.responses import Response

from relay.store import Store
from relay.webhooks.endpoints import add_endpoint
from tests.webhook_receiver import LOOPBACK, Received, RelayProcess, running, wait_rows, write_bookings


async def _endpoint(db_url: str, url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await add_endpoint(Store(conn), merchant_id="m1", url=url, allow=LOOPBACK)
    finally:
        await conn.close()


def _bulk(count: int) -> str:
    return (
        """INSERT INTO "Booking" (id, "merchantId", status) """
        f"""SELECT 'b' || g, 'm1', 'PENDING' FROM generate_series(1, {count}) g"""
    )


async def test_sigkill_mid_batch_then_restart_delivers_every_event_with_stable_ids(
    db_url: str, tmp_path: Path
) -> None:
    async def slow(_item: Received) -> Response:
        await asyncio.sleep(0.02)
        return Response(status_code=204)

    events = 300
    async with running(slow) as receiver:
        await _endpoint(db_url, receiver.url())
        env = {"RELAY_DELIVERY_LEASE": "2", "RELAY_RETRY_SCHEDULE": "0,100ms,100ms,100ms,100ms,100ms"}
        first = RelayProcess(db_url, tmp_path / "first.log", **env)
        await first.ready()
        await write_bookings(db_url, _bulk(events))
        while len(receiver.all) < 40:
            await asyncio.sleep(0.005)
        first.kill()  # in the middle of a batch: deliveries claimed, some in flight
        sent_before = len(receiver.all)
        assert sent_before < events

        second = RelayProcess(db_url, tmp_path / "second.log", **env)
        try:
            await second.ready()
            rows = await wait_rows(
                db_url, lambda rows: len(rows) == events and all(r["state"] == "succeeded" for r in rows), 60
            )
        finally:
            assert await second.stop() == 0

    assert len(rows) == events
    ids = {item.webhook_id for item in receiver.all}
    assert len(ids) == events  # every event arrived at least once
    for item in receiver.all:  # a duplicate carries the same webhook-id as the original
        assert item.webhook_id == f"evt_{item.json['data']['eventId']}"


async def test_two_relay_processes_deliver_2000_events_exactly_once(db_url: str, tmp_path: Path) -> None:
    events = 2000
    async with running() as receiver:
        await _endpoint(db_url, receiver.url())
        relays = [RelayProcess(db_url, tmp_path / f"relay{i}.log") for i in range(2)]
        try:
            await asyncio.gather(*(r.ready() for r in relays))
            await write_bookings(db_url, _bulk(events))
            workers: set[str] = set()
            conn = await asyncpg.connect(db_url)
            try:
                while len(receiver.all) < events:
                    rows = await conn.fetch(
                        "SELECT DISTINCT locked_by FROM relay.deliveries WHERE locked_by IS NOT NULL"
                    )
                    workers.update(r["locked_by"] for r in rows)
                    await asyncio.sleep(0.01)
            finally:
                await conn.close()
            rows = await wait_rows(db_url, lambda rows: all(r["state"] == "succeeded" for r in rows), 30)
            await asyncio.sleep(0.5)  # a late duplicate would arrive meanwhile
        finally:
            codes = [await r.stop() for r in relays]
    assert codes == [0, 0]
    assert len(rows) == events
    assert len(receiver.all) == events
    assert len({item.webhook_id for item in receiver.all}) == events
    assert len(workers) == 2  # both processes took part
