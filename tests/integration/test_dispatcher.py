"""The generic dispatcher, with a fake destination: attempts, per-destination fairness, failure streaks."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import ClassVar

import asyncpg
from starlette.responses import Response

from relay.db import create_pool
from relay.destinations import Delivery, Outcome
from relay.dispatcher import Dispatcher
from relay.events import Event
from relay.feed import Feed
from relay.retry import RetrySchedule
from relay.store import Store
from relay.webhooks.endpoints import add_endpoint, disable_failing_endpoints
from tests.webhook_receiver import (
    LOOPBACK,
    Received,
    booking,
    running,
    running_dispatcher,
    wait_rows,
    write_bookings,
)


class FakeDestination:
    """Webhook deliveries sent nowhere: to the endpoints of merchants m1, slow and fast."""

    kind: ClassVar[str] = "webhook"

    def __init__(self) -> None:
        self.calls: collections.Counter[int] = collections.Counter()
        self.sent: asyncio.Queue[Event] = asyncio.Queue()
        self.release_slow = asyncio.Event()
        self.fail_db_first = False
        self.slow_endpoint = 0

    async def load(self, deliveries: Sequence[Delivery]) -> None:
        return None

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        self.calls[delivery.id] += 1
        if self.fail_db_first and self.calls[delivery.id] == 1:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        if delivery.destination_id == self.slow_endpoint:
            await self.release_slow.wait()
        self.sent.put_nowait(event)
        return Outcome.success(200)

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        raise AssertionError("not expected")


async def _run(
    db_url: str, destination: FakeDestination, **kwargs: object
) -> tuple[asyncpg.Pool, asyncio.Event, list[asyncio.Task[None]], Dispatcher]:
    pool = await create_pool(db_url)
    store = Store(pool)
    for merchant in ("m1", "slow", "fast"):
        endpoint, _ = await add_endpoint(
            store, merchant_id=merchant, url="http://127.0.0.1:9/", allow=LOOPBACK
        )
        if merchant == "slow":
            destination.slow_endpoint = endpoint["id"]
    stop = asyncio.Event()
    dispatcher = Dispatcher(store, [destination], RetrySchedule.parse("0,100ms"), poll_interval=0.1, **kwargs)  # type: ignore[arg-type]
    feed = Feed(store, reconcile_interval=0.05)  # polls: no listener wakes it here
    feed.subscribe(lambda _events: dispatcher.wake())
    tasks = [
        asyncio.create_task(dispatcher.plan_loop(stop)),
        asyncio.create_task(dispatcher.deliver_loop(stop)),
    ]
    await dispatcher.started.wait()
    tasks.append(asyncio.create_task(feed.run(stop)))  # after the planner's cursors exist
    return pool, stop, tasks, dispatcher


async def test_a_database_error_before_the_send_does_not_use_up_an_attempt(db_url: str) -> None:
    destination = FakeDestination()
    destination.fail_db_first = True
    pool, stop, tasks, _ = await _run(db_url, destination)
    try:
        await write_bookings(db_url, booking("b1", "m1"))
        await asyncio.wait_for(destination.sent.get(), 10)
        rows = await wait_rows(db_url, lambda rows: rows and rows[0]["state"] == "succeeded")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await pool.close()
    assert list(destination.calls.values()) == [2]
    assert rows[0]["attempts"] == 1  # the schedule allows 2; the DB error did not count


async def test_one_slow_destination_does_not_stall_the_others(db_url: str) -> None:
    destination = FakeDestination()
    pool, stop, tasks, _ = await _run(db_url, destination, concurrency=16, per_destination=2, batch=20)
    try:
        await write_bookings(db_url, *(booking(f"slow{i}", "slow") for i in range(60)))
        await write_bookings(db_url, *(booking(f"fast{i}", "fast") for i in range(20)))
        fast = [await asyncio.wait_for(destination.sent.get(), 10) for _ in range(20)]
        assert all(str(e.data["id"]).startswith("fast") for e in fast)
        destination.release_slow.set()
        rest = [await asyncio.wait_for(destination.sent.get(), 10) for _ in range(60)]
        assert all(str(e.data["id"]).startswith("slow") for e in rest)
    finally:
        destination.release_slow.set()
        stop.set()
        await asyncio.gather(*tasks)
        await pool.close()


async def test_failure_streaks_are_tracked_and_long_ones_disable_the_endpoint(db_url: str) -> None:
    answers = collections.deque([500, 204])

    async def script(_item: Received) -> Response:
        return Response(status_code=answers.popleft() if answers else 204)

    conn = await asyncpg.connect(db_url)
    try:
        async with running(script) as receiver, running_dispatcher(db_url, schedule="0,300ms") as _d:
            endpoint, _ = await add_endpoint(
                Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK
            )
            await write_bookings(db_url, booking("b1", "m1"))
            await receiver.get()
            await wait_rows(db_url, lambda rows: rows and rows[0]["attempts"] == 1)
            failing = await conn.fetchval(
                "SELECT failing_since FROM relay.webhook_endpoints WHERE id = $1", endpoint["id"]
            )
            assert failing is not None
            await receiver.get()
            await wait_rows(db_url, lambda rows: rows[0]["state"] == "succeeded")
        assert (
            await conn.fetchval(
                "SELECT failing_since FROM relay.webhook_endpoints WHERE id = $1", endpoint["id"]
            )
            is None
        )

        await conn.execute(
            "UPDATE relay.webhook_endpoints SET failing_since = now() - interval '6 days' WHERE id = $1",
            endpoint["id"],
        )
        assert await disable_failing_endpoints(Store(conn), 5) == 1
        assert await disable_failing_endpoints(Store(conn), 5) == 0
        row = await conn.fetchrow("SELECT * FROM relay.webhook_endpoints WHERE id = $1", endpoint["id"])
        assert row["enabled"] is False and "failing continuously" in row["disabled_reason"]
        assert await Store(conn).enable_endpoint(endpoint["id"])
        row = await conn.fetchrow("SELECT * FROM relay.webhook_endpoints WHERE id = $1", endpoint["id"])
        assert row["enabled"] is True and row["failing_since"] is None and row["disabled_reason"] is None
    finally:
        await conn.close()


async def test_recording_retries_through_dropped_connections_without_a_second_send(db_url: str) -> None:
    killer = await asyncpg.connect(db_url)

    async def drop_relay_connections_then_accept(_item: Received) -> Response:
        # Every pooled connection of the dispatcher dies between "sent" and "recorded".
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'relay' AND datname = current_database()"
        )
        return Response(status_code=204)

    try:
        async with (
            running(drop_relay_connections_then_accept) as receiver,
            running_dispatcher(db_url, schedule="0,100ms,100ms") as _d,
        ):
            await add_endpoint(Store(killer), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
            await write_bookings(db_url, booking("b1", "m1"))
            await receiver.get()
            rows = await wait_rows(db_url, lambda rows: rows and rows[0]["state"] == "succeeded")
            assert await receiver.nothing_within(0.5)
    finally:
        await killer.close()
    assert rows[0]["attempts"] == 1 and rows[0]["last_status"] == 204
    assert len(receiver.all) == 1


async def test_outcomes_are_counted_in_the_metrics(db_url: str) -> None:
    from relay import metrics

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before_success = value("relay_deliveries_total", channel="webhook", outcome="success")
    before_seconds = value("relay_delivery_seconds_count", channel="webhook")
    async with running() as receiver, running_dispatcher(db_url) as _d:
        conn = await asyncpg.connect(db_url)
        await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
        await conn.close()
        await write_bookings(db_url, booking("b1", "m1"), booking("b2", "m1"))
        await wait_rows(db_url, lambda rows: len(rows) == 2 and all(r["state"] == "succeeded" for r in rows))
    assert value("relay_deliveries_total", channel="webhook", outcome="success") == before_success + 2
    assert value("relay_delivery_seconds_count", channel="webhook") == before_seconds + 2


async def test_stopping_hands_in_flight_deliveries_back_without_using_an_attempt(db_url: str) -> None:
    hang = asyncio.Event()

    async def hangs(_item: Received) -> Response:
        await hang.wait()
        return Response(status_code=204)

    async with running(hangs) as receiver:
        async with running_dispatcher(db_url, grace=1.0) as _d:
            conn = await asyncpg.connect(db_url)
            await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
            await conn.close()
            await write_bookings(db_url, booking("b1", "m1"))
            await receiver.get()  # the send is in flight; now stop
        hang.set()
    rows = await wait_rows(db_url, lambda rows: len(rows) == 1)
    assert (rows[0]["state"], rows[0]["attempts"], rows[0]["locked_by"]) == ("pending", 0, None)
