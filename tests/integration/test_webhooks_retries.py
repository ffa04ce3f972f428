"""Retries on the schedule, Retry-After, 410, redirects and hung receivers."""

from __future__ import annotations

import asyncio
import collections

import asyncpg
from starlette.responses import Response

from relay import app
from relay.store import Store
from relay.webhooks.endpoints import add_endpoint
from tests.conftest import make_settings
from tests.webhook_receiver import (
    LOOPBACK,
    Received,
    Receiver,
    booking,
    running,
    running_dispatcher,
    wait_rows,
    write_bookings,
)

ALLOW = "127.0.0.0/8"


async def test_down_then_500_then_429_then_back_delivers_everything_on_schedule(db_url: str) -> None:
    calls: collections.Counter[str] = collections.Counter()

    async def script(item: Received) -> Response:
        calls[item.webhook_id] += 1
        if calls[item.webhook_id] == 1:
            return Response("boom", status_code=500)
        if calls[item.webhook_id] == 2:
            return Response(status_code=429, headers={"retry-after": "1"})
        return Response(status_code=204)

    receiver = Receiver(script)  # not started: the receiver is down
    settings = make_settings(
        db_url, egress_allow=ALLOW, retry_schedule="0,200ms,200ms,200ms,200ms,200ms,200ms,200ms"
    )
    async with app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        await add_endpoint(relay.store, merchant_id="m1", url=receiver.url(), allow=settings.egress_allow)
        await write_bookings(db_url, booking("b1", "m1"), booking("b2", "m1"), booking("b3", "m1"))
        down = await wait_rows(db_url, lambda rows: len(rows) == 3 and all(r["attempts"] >= 1 for r in rows))
        assert all(r["last_status"] is None and "Connect" in (r["last_error"] or "") for r in down)
        await receiver.start()
        try:
            rows = await wait_rows(db_url, lambda rows: all(r["state"] == "succeeded" for r in rows))
        finally:
            await receiver.stop()

    assert all(r["last_status"] == 204 for r in rows)
    by_id: dict[str, list[Received]] = collections.defaultdict(list)
    for item in receiver.all:
        by_id[item.webhook_id].append(item)
    assert len(by_id) == 3
    for attempts in by_id.values():
        assert len(attempts) == 3  # 500, 429, 204
        assert attempts[1].at - attempts[0].at >= 0.18  # the schedule's 200 ms (jitter only adds)
        assert attempts[2].at - attempts[1].at >= 0.95  # Retry-After: 1 beats the schedule's 200 ms
    for row in rows:
        # the refused attempts while down, then 500, 429 and the success
        assert row["attempts"] >= 4


async def test_410_disables_the_endpoint_and_nothing_more_is_sent(db_url: str) -> None:
    async def gone(_item: Received) -> Response:
        return Response(status_code=410)

    async with running(gone) as receiver, running_dispatcher(db_url) as _dispatcher:
        conn = await asyncpg.connect(db_url)
        endpoint, _ = await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
        await write_bookings(db_url, booking("b1", "m1"))
        await receiver.get()
        rows = await wait_rows(db_url, lambda rows: rows and rows[0]["state"] == "failed")
        assert rows[0]["attempts"] == 1 and rows[0]["last_status"] == 410
        row = await conn.fetchrow("SELECT * FROM relay.webhook_endpoints WHERE id = $1", endpoint["id"])
        assert row["enabled"] is False
        assert "410" in row["disabled_reason"] and row["disabled_at"] is not None
        await write_bookings(db_url, booking("b2", "m1"))
        assert await receiver.nothing_within(0.8)
        await conn.close()


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(db_url: str) -> None:
    async def redirect(item: Received) -> Response:
        if item.path == "/elsewhere":
            return Response(status_code=204)
        return Response(status_code=302, headers={"location": "/elsewhere"})

    async with running(redirect) as receiver, running_dispatcher(db_url, schedule="0,100ms") as _dispatcher:
        conn = await asyncpg.connect(db_url)
        await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
        await conn.close()
        await write_bookings(db_url, booking("b1", "m1"))
        rows = await wait_rows(db_url, lambda rows: rows and rows[0]["state"] == "failed")
    assert rows[0]["attempts"] == 2 and rows[0]["last_status"] == 302
    assert "redirect" in rows[0]["last_error"]
    assert [item.path for item in receiver.all] == ["/hook", "/hook"]


async def test_a_hung_receiver_times_out_and_the_delivery_is_retried(db_url: str) -> None:
    hang = asyncio.Event()
    calls = 0

    async def first_hangs(_item: Received) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hang.wait()
        return Response(status_code=204)

    async with running(first_hangs) as receiver:
        async with running_dispatcher(db_url, send_timeout=0.5) as _dispatcher:
            conn = await asyncpg.connect(db_url)
            await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
            await conn.close()
            await write_bookings(db_url, booking("b1", "m1"))
            rows = await wait_rows(db_url, lambda rows: rows and rows[0]["state"] == "succeeded")
        hang.set()
    assert rows[0]["attempts"] == 2
    assert len(receiver.all) == 2
    assert receiver.all[0].webhook_id == receiver.all[1].webhook_id
